#include "training/adam.h"

#include <cmath>

#include "nn/check.h"
#include "nn/profile.h"

namespace toptag {

Adam::Adam(std::vector<NamedParameter> parameters, AdamOptions options)
    : parameters_(std::move(parameters)), options_(options) {
  for (const auto& p : parameters_) {
    m_.push_back(Tensor::zeros(p.var->shape()));
    v_.push_back(Tensor::zeros(p.var->shape()));
  }
}

void Adam::step() {
  ProfileScope profile("adam");
  ++step_;
  const double t = static_cast<double>(step_);
  const float b1 = static_cast<float>(options_.beta1), b2 = static_cast<float>(options_.beta2);
  const float step_size = static_cast<float>(options_.lr / (1.0 - std::pow(options_.beta1, t)));
  const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(options_.beta2, t)));
  const float eps = static_cast<float>(options_.eps);
  const float decay = static_cast<float>(1.0 - options_.lr * options_.weight_decay);
  for (size_t i = 0; i < parameters_.size(); ++i) {
    Var& p = *parameters_[i].var;
    if (!p.grad().defined()) continue;
    float* w = p.value().data();
    const float* g = p.grad().data();
    float* m = m_[i].data();
    float* v = v_[i].data();
    const int64_t n = p.value().numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t j = 0; j < n; ++j) {
      m[j] = b1 * m[j] + (1.0f - b1) * g[j];
      v[j] = b2 * v[j] + (1.0f - b2) * g[j] * g[j];
      w[j] = w[j] * decay - step_size * m[j] / (std::sqrt(v[j]) * inv_sqrt_bc2 + eps);
    }
  }
}

void Adam::zero_grad() {
  for (auto& p : parameters_) p.var->zero_grad();
}

void Adam::save(hid_t group) const {
  h5_set_attr(group, "step", step_);
  h5_set_attr(group, "lr", options_.lr);
  for (size_t i = 0; i < parameters_.size(); ++i) {
    h5_write_tensor(group, "m/" + parameters_[i].name, m_[i]);
    h5_write_tensor(group, "v/" + parameters_[i].name, v_[i]);
  }
}

void Adam::load(hid_t group, const std::string& file) {
  std::optional<int64_t> step = h5_attr_int(group, "step");
  if (!step) fail("{}: optimizer state has no 'step' attribute", file);
  std::vector<Tensor> m, v;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    for (const char* kind : {"m/", "v/"}) {
      const std::string name = kind + parameters_[i].name;
      Tensor t = h5_read_tensor(group, name, file);
      if (!(t.shape() == parameters_[i].var->shape()))
        fail("{}: optimizer tensor '{}' has shape {}, expected {}", file, name, t.shape().str(),
             parameters_[i].var->shape().str());
      const bool second_moment = kind[0] == 'v';
      for (int64_t j = 0; j < t.numel(); ++j)
        if (!std::isfinite(t.data()[j]) || (second_moment && t.data()[j] < 0))
          fail("{}: optimizer tensor '{}' holds {} at element {}", file, name, t.data()[j], j);
      (kind[0] == 'm' ? m : v).push_back(std::move(t));
    }
  }
  m_ = std::move(m);
  v_ = std::move(v);
  step_ = *step;
}

}  // namespace toptag
