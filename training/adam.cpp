#include "training/adam.h"

#include <algorithm>
#include <cmath>

#include "nn/check.h"
#include "nn/kernels/isa.h"
#include "nn/kernels/tile.h"
#include "nn/parallel.h"
#include "nn/profile.h"

namespace toptag {

namespace {
constexpr int64_t kParallelMin = 1 << 15;  // parameters below which one thread updates a tensor
}  // namespace

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
  AdamStep a;
  a.b1 = static_cast<float>(options_.beta1);
  a.b2 = static_cast<float>(options_.beta2);
  a.step_size = static_cast<float>(options_.lr / (1.0 - std::pow(options_.beta1, t)));
  a.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(options_.beta2, t)));
  a.eps = static_cast<float>(options_.eps);
  a.decay = static_cast<float>(1.0 - options_.lr * options_.weight_decay);
  const KernelSet& ks = kernels(active_isa());
  for (size_t i = 0; i < parameters_.size(); ++i) {
    Var& p = *parameters_[i].var;
    if (!p.grad().defined()) continue;
    float* w = p.value().data();
    const float* g = p.grad().data();
    float* m = m_[i].data();
    float* v = v_[i].data();
    const int64_t n = p.value().numel();
    // Pieces of whole cache lines, one a thread; a small tensor (a bias) in one.
    const int64_t pieces = n >= kParallelMin ? num_threads() : 1, piece = (n / pieces + 15) / 16 * 16;
#pragma omp parallel for schedule(static) if (pieces > 1)
    for (int64_t k = 0; k < pieces; ++k) {
      const int64_t j0 = std::min(n, k * piece), j1 = k + 1 == pieces ? n : std::min(n, j0 + piece);
      ks.adam(a, w + j0, g + j0, m + j0, v + j0, j1 - j0);
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
