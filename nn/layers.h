// Layers with named, trainable state. Each layer lists its tensors under torchvision's
// state_dict names, so checkpoints use the same keys as PyTorch ("layer1.0.conv1.weight").
#pragma once

#include <string>
#include <vector>

#include "nn/ops/batchnorm2d.h"
#include "nn/ops/conv2d.h"
#include "nn/random.h"

namespace toptag {

// A model's named state: trainable parameters and non-trainable buffers (running statistics).
struct NamedParameter {
  std::string name;
  Var* var;
};
struct NamedBuffer {
  std::string name;
  Tensor* tensor;
};
struct StateList {
  std::vector<NamedParameter> parameters;
  std::vector<NamedBuffer> buffers;
  int64_t parameter_count() const;
};

class Conv2d {
 public:
  Conv2d() = default;
  // Kaiming-normal init, fan_out mode for ReLU: std = sqrt(2 / (out_channels * k * k)), as torchvision's ResNet.
  Conv2d(int64_t in_channels, int64_t out_channels, int kernel, Conv2dParams params, Rng& rng);
  Var forward(const Var& x) const { return conv2d(x, weight, params); }
  void collect(const std::string& prefix, StateList& out);

  Var weight;  // (K, C, R, S)
  Conv2dParams params;
};

class BatchNorm2d {
 public:
  BatchNorm2d() = default;
  explicit BatchNorm2d(int64_t channels);  // weight 1, bias 0, running mean 0, running var 1
  Var forward(const Var& x);
  void collect(const std::string& prefix, StateList& out);

  Var weight, bias;                 // (C)
  Tensor running_mean, running_var; // (C)
  bool training = true;
};

class Linear {
 public:
  Linear() = default;
  // PyTorch's default init: weight and bias uniform in +-1/sqrt(in_features).
  Linear(int64_t in_features, int64_t out_features, Rng& rng);
  Var forward(const Var& x) const;
  void collect(const std::string& prefix, StateList& out);

  Var weight;  // (out, in)
  Var bias;    // (out)
};

}  // namespace toptag
