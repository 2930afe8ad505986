#include "nn/layers.h"

#include <cmath>

#include "nn/check.h"
#include "nn/ops/conv2d_nhwc.h"
#include "nn/ops/elementwise.h"
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

Var Conv2d::forward(const Var& x, bool relu, ActivationLayout layout) const {
  const Var w = hooks && hooks->weight ? hooks->weight(weight) : weight;
  Conv2dParams p = params;
  p.relu = relu;
  const Var* b = bias.value().defined() ? &bias : nullptr;
  if (layout == ActivationLayout::nhwc) {
    if (has_input_hook()) fail("conv2d: an input hook runs on NCHW activations, not channels-last");
    return conv2d_nhwc(x, w, b, p);
  }
  return conv2d(has_input_hook() ? hooks->input(x) : x, w, b, p);
}

void Conv2d::collect(const std::string& prefix, StateList& out) {
  out.parameters.push_back({prefix + "weight", &weight});
  if (bias.value().defined()) out.parameters.push_back({prefix + "bias", &bias});
}

BatchNorm2d::BatchNorm2d(int64_t channels)
    : weight(Var::parameter(Tensor::full({channels}, 1.0f))),
      bias(Var::parameter(Tensor::zeros({channels}))),
      running_mean(Tensor::zeros({channels})),
      running_var(Tensor::full({channels}, 1.0f)) {}

Var BatchNorm2d::forward(const Var& x, bool relu, ActivationLayout layout) {
  if (folded) return relu ? toptag::relu(x) : x;
  BatchNormParams p;
  p.training = training;
  p.eps = eps;
  p.relu = relu;
  if (layout == ActivationLayout::nhwc) return batchnorm2d_nhwc(x, weight, bias, running_mean, running_var, p);
  return batchnorm2d(x, weight, bias, running_mean, running_var, p);
}

Var conv_bn(const Conv2d& conv, BatchNorm2d& bn, const Var& x, bool relu, ActivationLayout layout) {
  if (bn.folded) return conv.forward(x, relu, layout);
  return bn.forward(conv.forward(x, false, layout), relu, layout);
}

void BatchNorm2d::fold_into(Conv2d& conv) {
  if (folded) return;
  const int64_t K = conv.weight.shape()[0], per = conv.weight.value().numel() / K;
  Tensor b = conv.bias.value().defined() ? conv.bias.value().clone() : Tensor::zeros({K});
  float* w = conv.weight.value().data();
  for (int64_t k = 0; k < K; ++k) {
    const double scale = weight.value().data()[k] / std::sqrt(static_cast<double>(running_var.data()[k]) + eps);
    for (int64_t i = 0; i < per; ++i) w[k * per + i] = static_cast<float>(w[k * per + i] * scale);
    b.data()[k] = static_cast<float>(bias.value().data()[k] + (b.data()[k] - running_mean.data()[k]) * scale);
  }
  conv.bias = Var::parameter(b);
  folded = true;
  weight = bias = Var();
  running_mean = running_var = Tensor();
}

void BatchNorm2d::collect(const std::string& prefix, StateList& out) {
  if (folded) return;
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

Var Linear::forward(const Var& x) const {
  const Var w = hooks && hooks->weight ? hooks->weight(weight) : weight;
  const Var in = hooks && hooks->input ? hooks->input(x) : x;
  return linear(in, w, &bias);
}

void Linear::collect(const std::string& prefix, StateList& out) {
  out.parameters.push_back({prefix + "weight", &weight});
  out.parameters.push_back({prefix + "bias", &bias});
}

}  // namespace toptag
