// 2-D convolution on channels-last activations, for training and the unfrozen forward: the function
// conv2d computes, with x: (N,H,W,C) -> y: (N,P,Q,K) and the weight still in PyTorch's (K,C,R,S), so
// parameters, their gradients, checkpoints and the goldens keep one layout.
//
// In this layout the pixels are the rows of a (N*H*W, C) matrix:
//  - a 1x1 stride-1 convolution is one GEMM in forward, in dX and in dW, on the tensors themselves;
//  - any other runs forward on toptag's direct kernel (nn/kernels/packed_conv.h), over the weight
//    packed from (K,C,R,S) on every call; so does dX of a stride-1 one with a square kernel, a
//    convolution of dY by the flipped weight. The direct kernel reads each pixel's window where it
//    lies and, on small maps at batches of 8 or more, skips the taps in the padding: 56% of im2col's
//    products on ResNet-50's 2x2 maps at 40x40, 40% on its 3x3 maps.
//  - dW, and any other dX, gather (R,S,C) column rows (im2col), each piece a
//    contiguous run of C floats, for a GEMM, and scatter dX back the same way (col2im); the weight is
//    read as (K, R*S*C) there, and dW is transposed back to (K,C,R,S).
// Backward gathers the columns for dW again rather than keeping the forward's: at 40x40, batch 64,
// ResNet-50's would hold 125 MB through the step.
// On the reference kernel set (TOPTAG_ISA=ref) every convolution takes the im2col path.
#pragma once

#include "nn/autograd.h"
#include "nn/kernels/isa_id.h"
#include "nn/ops/conv2d.h"

namespace toptag {

// x: (N,H,W,C), w: (K,C,R,S), bias: (K) or none -> y: (N,P,Q,K)
Var conv2d_nhwc(const Var& x, const Var& w, const Var* bias, Conv2dParams params);

// The kernel set conv2d_nhwc's direct convolutions run on: active_isa(), unless a test chose another
// so that every path is tested on a machine that has it. Isa::ref: im2col and GEMMs only.
Isa conv2d_nhwc_isa();
void set_conv2d_nhwc_isa(Isa isa);

}  // namespace toptag
