// Batch normalisation over (N, H, W) per channel, PyTorch semantics (eps 1e-5, momentum 0.1).
// Training: normalise with the batch mean and biased variance, and update the running statistics
// with the unbiased variance: running = (1 - momentum) * running + momentum * batch.
// Eval: normalise with the running statistics.
#pragma once

#include "nn/autograd.h"

namespace toptag {

struct BatchNormParams {
  float eps = 1e-5f;
  float momentum = 0.1f;
  bool training = true;
  bool relu = false;  // y = max(0, batchnorm(x)) in the same pass (backward masks dy by y > 0)
};

// x: (N,C,H,W), gamma, beta: (C), running_mean, running_var: (C), updated in place when training
// -> y: (N,C,H,W)
Var batchnorm2d(const Var& x, const Var& gamma, const Var& beta, Tensor& running_mean, Tensor& running_var,
                BatchNormParams params);

}  // namespace toptag
