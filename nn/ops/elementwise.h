// Elementwise ops: relu and add.
#pragma once

#include "nn/autograd.h"

namespace toptag {

// x: any -> y = max(x, 0), same shape. Backward: dx = dy * (y > 0).
Var relu(const Var& x);

// a, b: same shape -> y = a + b. Backward: da = dy, db = dy.
Var add(const Var& a, const Var& b);
// dy * (y > 0): the gradient through a ReLU whose output is y (also a fused one).
Tensor relu_backward(const Tensor& gy, const Tensor& y);
// relu(add(a, b)) in one pass: a residual block's output. Backward: da = db = dy * (y > 0).
Var add_relu(const Var& a, const Var& b);

}  // namespace toptag
