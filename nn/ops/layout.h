// Activation layouts. PyTorch's is NCHW (channels-first); the engine computes in NHWC
// (channels-last), where a channel is the fastest-moving index: a 1x1 convolution is a plain GEMM
// over (pixels, channels), and batch norm, ReLU and add run along contiguous channels.
#pragma once

#include "nn/autograd.h"

namespace toptag {

enum class ActivationLayout { nchw, nhwc };

// out[b][j][i] = in[b][i][j]: each of `batches` (rows x cols) matrices transposed. The one loop
// behind every layout change: activations (N, C, H*W) <-> (N, H*W, C), a conv weight (K, C, R*S)
// <-> (K, R*S, C).
void transpose_matrices(const float* in, int64_t batches, int64_t rows, int64_t cols, float* out);

// (N, C, H, W) -> (N, H, W, C), and back. With one channel, the same storage reshaped.
Tensor nchw_to_nhwc(const Tensor& x);
Tensor nhwc_to_nchw(const Tensor& x);

// x: (N,C,H,W) -> y: (N,H,W,C). Backward: dx = dy back in NCHW.
Var to_channels_last(const Var& x);

}  // namespace toptag
