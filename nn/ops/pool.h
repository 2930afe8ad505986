// Pooling and reshaping: maxpool2d, global average pool, flatten.
#pragma once

#include "nn/autograd.h"

namespace toptag {

struct MaxPool2dParams {
  int kernel = 3;
  int stride = 2;
  int padding = 1;
};

// x: (N,C,H,W) -> y: (N,C,P,Q), P = (H + 2*padding - kernel) / stride + 1. Padding never wins the max.
// Backward routes dy to the first maximum of each window (PyTorch's tie rule), found again from x.
Var maxpool2d(const Var& x, MaxPool2dParams params);

// x: (N,C,H,W) -> y: (N,C), the mean over H and W. Backward: dx = dy / (H*W) everywhere.
Var global_avgpool(const Var& x);

// The same two pools on channels-last activations, x: (N,H,W,C) -> y: (N,P,Q,C) and (N,C); the
// loops run along contiguous channels. maxpool2d_nhwc keeps the same tie rule.
Var maxpool2d_nhwc(const Var& x, MaxPool2dParams params);
Var global_avgpool_nhwc(const Var& x);
// out[c] = max(out[c], in[c]) for c < n, a NaN winning as in the max pools above (a loop the compiler
// vectorises: x != x is NaN).
inline void max_into(float* out, const float* in, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    const float a = in[c], b = out[c];
    out[c] = (a > b || (a != a && b == b)) ? a : b;
  }
}

// A max pool's sizes: input N x C x H x W, output P x Q. pool_geometry checks the window and the
// input's size, naming `op` (and the shape s) in its errors.
struct PoolGeometry {
  int64_t N, C, H, W, P, Q;
  MaxPool2dParams p;
};
PoolGeometry pool_geometry(const char* op, const Shape& s, int64_t N, int64_t C, int64_t H, int64_t W,
                           MaxPool2dParams params);
// out[0, C) = the max over output pixel (oh, ow)'s window of one channels-last image, whose row
// `first_row` is at x (rows before it are never read: the window must not reach them); the NaN rule
// of max_into.
void window_max_nhwc(const float* x, int64_t first_row, const PoolGeometry& g, int64_t oh, int64_t ow, float* out);

// Their forward passes alone, for the frozen inference plan.
Tensor maxpool_nhwc(const Tensor& x, MaxPool2dParams params);
Tensor global_avgpool_nhwc(const Tensor& x);

// x: (N, ...) -> y: (N, prod(...)), sharing storage. Backward reshapes dy.
Var flatten(const Var& x);

}  // namespace toptag
