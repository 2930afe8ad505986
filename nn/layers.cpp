#include "nn/layers.h"

#include <cmath>

#include "nn/ops/linear.h"

namespace toptag {

int64_t StateList::parameter_count() const {
  int64_t n = 0;
  for (const auto& p : parameters) n += p.var->value().numel();
  return n;
}

Conv2d::Conv2d(int64_t in_channels, int64_t out_channels, int kernel, Conv2dParams params_, Rng& rng)
    : params(params_) {
  Tensor w = Tensor::empty({out_channels, in_channels, kernel, kernel});
  const double stddev = std::sqrt(2.0 / static_cast<double>(out_channels * kernel * kernel));
  for (float& v : w.span()) v = static_cast<float>(stddev * rng.normal());
  weight = Var::parameter(std::move(w));
}

void Conv2d::collect(const std::string& prefix, StateList& out) { out.parameters.push_back({prefix + "weight", &weight}); }

BatchNorm2d::BatchNorm2d(int64_t channels)
    : weight(Var::parameter(Tensor::full({channels}, 1.0f))),
      bias(Var::parameter(Tensor::zeros({channels}))),
      running_mean(Tensor::zeros({channels})),
      running_var(Tensor::full({channels}, 1.0f)) {}

Var BatchNorm2d::forward(const Var& x) {
  BatchNormParams p;
  p.training = training;
  return batchnorm2d(x, weight, bias, running_mean, running_var, p);
}

void BatchNorm2d::collect(const std::string& prefix, StateList& out) {
  out.parameters.push_back({prefix + "weight", &weight});
  out.parameters.push_back({prefix + "bias", &bias});
  out.buffers.push_back({prefix + "running_mean", &running_mean});
  out.buffers.push_back({prefix + "running_var", &running_var});
}

Linear::Linear(int64_t in_features, int64_t out_features, Rng& rng) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
  Tensor w = Tensor::empty({out_features, in_features});
  for (float& v : w.span()) v = static_cast<float>(rng.uniform(-bound, bound));
  Tensor b = Tensor::empty({out_features});
  for (float& v : b.span()) v = static_cast<float>(rng.uniform(-bound, bound));
  weight = Var::parameter(std::move(w));
  bias = Var::parameter(std::move(b));
}

Var Linear::forward(const Var& x) const { return linear(x, weight, &bias); }

void Linear::collect(const std::string& prefix, StateList& out) {
  out.parameters.push_back({prefix + "weight", &weight});
  out.parameters.push_back({prefix + "bias", &bias});
}

}  // namespace toptag
