// 2-D convolution on channels-last activations, for training and the unfrozen forward: the function
// conv2d computes, with x: (N,H,W,C) -> y: (N,P,Q,K) and the weight still in PyTorch's (K,C,R,S), so
// parameters, their gradients, checkpoints and the goldens keep one layout.
//
// In this layout the pixels are the rows of a (N*H*W, C) matrix:
//  - a 1x1 stride-1 convolution is one GEMM in forward, in dX and in dW, on the tensors themselves;
//  - any other gathers (R,S,C) column rows (im2col), each piece a contiguous run of C floats, and
//    scatters dX back the same way (col2im). The weight is read as (K, R*S*C): transposed once in
//    forward and kept for dX, and dW is transposed back to (K,C,R,S).
// Backward gathers the columns for dW again rather than keeping the forward's: at 40x40, batch 64,
// ResNet-50's would hold 125 MB through the step.
#pragma once

#include "nn/autograd.h"
#include "nn/ops/conv2d.h"

namespace toptag {

// x: (N,H,W,C), w: (K,C,R,S), bias: (K) or none -> y: (N,P,Q,K)
Var conv2d_nhwc(const Var& x, const Var& w, const Var* bias, Conv2dParams params);

}  // namespace toptag
