// Adam with PyTorch semantics (torch.optim.Adam / AdamW):
//   m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// Optional decoupled weight decay (AdamW, Loshchilov & Hutter): p *= 1 - lr * weight_decay first.
#pragma once

#include <string>
#include <vector>

#include "io/h5.h"
#include "nn/layers.h"

namespace toptag {

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // decoupled
};

class Adam {
 public:
  Adam(std::vector<NamedParameter> parameters, AdamOptions options);

  // One update of every parameter from its accumulated gradient.
  void step();
  void zero_grad();

  double lr() const { return options_.lr; }
  void set_lr(double lr) { options_.lr = lr; }
  int64_t steps() const { return step_; }
  const AdamOptions& options() const { return options_; }

  // Moments and step count in an HDF5 group ("m/<name>", "v/<name>", attribute "step").
  void save(hid_t group) const;
  // Throws naming the file and tensor if a moment is missing or has the wrong shape.
  void load(hid_t group, const std::string& file);

 private:
  std::vector<NamedParameter> parameters_;
  std::vector<Tensor> m_, v_;
  AdamOptions options_;
  int64_t step_ = 0;
};

}  // namespace toptag
