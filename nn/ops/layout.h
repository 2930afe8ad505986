// Activation layouts. PyTorch's is NCHW (channels-first); the engine computes in NHWC
// (channels-last), where a channel is the fastest-moving index: a 1x1 convolution is a plain GEMM
// over (pixels, channels), and batch norm, ReLU and add run along contiguous channels.
#pragma once

#include "nn/autograd.h"

namespace toptag {

enum class ActivationLayout { nchw, nhwc };

// (N, C, H, W) -> (N, H, W, C), and back. With one channel, the same storage reshaped.
Tensor nchw_to_nhwc(const Tensor& x);
Tensor nhwc_to_nchw(const Tensor& x);

// x: (N,C,H,W) -> y: (N,H,W,C). Backward: dx = dy back in NCHW.
Var to_channels_last(const Var& x);

}  // namespace toptag
