#include "nn/ops/layout.h"

#include "nn/check.h"
#include "nn/profile.h"

namespace toptag {

void transpose_matrices(const float* in, int64_t batches, int64_t rows, int64_t cols, float* out) {
  const float* __restrict src = in;
  float* __restrict dst = out;
  // Output rows in order: the writes stream; a matrix's strided reads come back from cache.
#pragma omp parallel for collapse(2) schedule(static) if (batches * rows * cols > 65536)
  for (int64_t b = 0; b < batches; ++b)
    for (int64_t j = 0; j < cols; ++j)
      for (int64_t i = 0; i < rows; ++i) dst[(b * cols + j) * rows + i] = src[(b * rows + i) * cols + j];
}

// One channel: the same values in the same order, so only the shape changes (the storage is shared).
Tensor nchw_to_nhwc(const Tensor& x) {
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  if (C == 1) return x.reshape({N, H, W, 1});
  Tensor y = Tensor::empty({N, H, W, C});
  transpose_matrices(x.data(), N, C, H * W, y.data());
  return y;
}

Tensor nhwc_to_nchw(const Tensor& x) {
  const int64_t N = x.dim(0), H = x.dim(1), W = x.dim(2), C = x.dim(3);
  if (C == 1) return x.reshape({N, 1, H, W});
  Tensor y = Tensor::empty({N, C, H, W});
  transpose_matrices(x.data(), N, H * W, C, y.data());
  return y;
}

Var to_channels_last(const Var& x) {
  if (x.shape().rank() != 4) fail("to_channels_last: input must be (N,C,H,W), found shape {}", x.shape().str());
  ProfileScope profile("layout");
  return record_op(nchw_to_nhwc(x.value()), {&x},
                   [xs = x.slot()](const Tensor& gy) { add_grad(*xs, nhwc_to_nchw(gy)); });
}

}  // namespace toptag
