// 2-D convolution (groups = 1), by im2col + GEMM (nn/gemm.h).
// Shape letters: N batch, C input channels, H W input size, K output channels, R S kernel size,
// P Q output size with P = (H + 2*padding - R) / stride + 1.
#pragma once

#include <optional>

#include "nn/autograd.h"

namespace toptag {

struct Conv2dParams {
  int stride = 1;
  int padding = 0;
  bool relu = false;  // y = max(0, conv(x) + bias) in the same pass (backward masks dy by y > 0)
};

// x: (N,C,H,W), w: (K,C,R,S), bias: (K) or none -> y: (N,K,P,Q)
Var conv2d(const Var& x, const Var& w, const Var* bias, Conv2dParams params);
inline Var conv2d(const Var& x, const Var& w, Conv2dParams params) {
  return conv2d(x, w, nullptr, params);
}

// Column (im2col) scratch one GEMM may use: a batch is taken in chunks of images that fit, at least
// one image a chunk. Returns the images per chunk for `floats_per_image` of columns, in [1, max(N, 1)].
constexpr int64_t kColumnBudgetFloats = int64_t{16} << 20;  // 64 MiB
int64_t images_within_column_budget(int64_t floats_per_image, int64_t N);

// Output shape, or a toptag::Error naming the mismatch.
Shape conv2d_output_shape(const Shape& x, const Shape& w, Conv2dParams params);

// Direct seven-loop reference (double accumulation) for tests: same contract as conv2d's forward.
Tensor conv2d_forward_ref(const Tensor& x, const Tensor& w, const Tensor* bias, Conv2dParams params);

}  // namespace toptag
