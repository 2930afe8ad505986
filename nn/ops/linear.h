// Fully connected layer, PyTorch layout: weight (out, in).
#pragma once

#include "nn/autograd.h"

namespace toptag {

// x: (N, I), w: (O, I), bias: (O) or none -> y: (N, O) = x w^T + bias
// Backward: dx = dy w,  dw += dy^T x,  dbias += sum over n of dy.
Var linear(const Var& x, const Var& w, const Var* bias);

}  // namespace toptag
