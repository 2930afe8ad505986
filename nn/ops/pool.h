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

// x: (N, ...) -> y: (N, prod(...)), sharing storage. Backward reshapes dy.
Var flatten(const Var& x);

}  // namespace toptag
