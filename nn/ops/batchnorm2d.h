// Batch normalisation over (N, H, W) per channel, PyTorch semantics (eps 1e-5, momentum 0.1).
// Training: normalise with the batch mean and biased variance, and update the running statistics
// with the unbiased variance: running = (1 - momentum) * running + momentum * batch.
// Eval: normalise with the running statistics.
#pragma once

#include <functional>
#include <span>

#include "nn/autograd.h"

namespace toptag {

struct BatchNormParams {
  float eps = 1e-5f;
  float momentum = 0.1f;
  bool training = true;
  bool relu = false;  // y = max(0, batchnorm(x)) in the same pass (backward masks dy by y > 0)
};

// Synchronised batch norm for data-parallel training: training-mode statistics (and the two sums of
// the backward pass) are summed over every process's batch through `sum` (an MPI allreduce, set by
// training). Unset (the default), each process normalises with its own batch. The parameter
// gradients stay this process's part, for the training loop's gradient averaging to combine.
using CrossBatchSum = std::function<void(std::span<double>)>;
void set_batchnorm_cross_batch_sum(CrossBatchSum sum);

// x: (N,C,H,W), gamma, beta: (C), running_mean, running_var: (C), updated in place when training
// -> y: (N,C,H,W)
Var batchnorm2d(const Var& x, const Var& gamma, const Var& beta, Tensor& running_mean, Tensor& running_var,
                BatchNormParams params);

// The same on channels-last x: (N,H,W,C) -> y: (N,H,W,C). The statistics take one pass over x (each
// cache-sized block's sum and squared deviations, merged pairwise in double: no sum of squares to
// cancel), every loop runs along contiguous channels, and backward's two sums take one pass.
Var batchnorm2d_nhwc(const Var& x, const Var& gamma, const Var& beta, Tensor& running_mean, Tensor& running_var,
                     BatchNormParams params);

}  // namespace toptag
