// Layers with named, trainable state. Each layer lists its tensors under torchvision's
// state_dict names, so checkpoints use the same keys as PyTorch ("layer1.0.conv1.weight").
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nn/ops/batchnorm2d.h"
#include "nn/ops/conv2d.h"
#include "nn/ops/layout.h"
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

// Transforms applied on every forward pass to a layer's weight and to its input, e.g. fake
// quantization (quantize/). Either may be empty.
struct LayerHooks {
  std::function<Var(const Var&)> weight, input;
};

class Conv2d {
 public:
  Conv2d() = default;
  // Kaiming-normal init, fan_out mode for ReLU: std = sqrt(2 / (out_channels * k * k)), as torchvision's ResNet.
  Conv2d(int64_t in_channels, int64_t out_channels, int kernel, Conv2dParams params, Rng& rng);
  // relu: max(0, .) applied to the output in the same pass. x in `layout` ((N,C,H,W) or (N,H,W,C)),
  // and y in the same; channels-last takes no input hook (a hook's blocks run along NCHW's channels).
  Var forward(const Var& x, bool relu = false, ActivationLayout layout = ActivationLayout::nchw) const;
  bool has_input_hook() const { return hooks && hooks->input; }
  void collect(const std::string& prefix, StateList& out);

  Var weight;  // (K, C, R, S)
  Var bias;    // (K); undefined unless a batch norm was folded into this conv
  Conv2dParams params;
  std::shared_ptr<LayerHooks> hooks;
};

class BatchNorm2d {
 public:
  BatchNorm2d() = default;
  explicit BatchNorm2d(int64_t channels);  // weight 1, bias 0, running mean 0, running var 1
  Var forward(const Var& x, bool relu = false, ActivationLayout layout = ActivationLayout::nchw);
  void collect(const std::string& prefix, StateList& out);
  // Folds this normalisation (eval mode) into the preceding conv:
  //   w' = w * gamma / sqrt(var + eps),  b' = beta + (b - mean) * gamma / sqrt(var + eps)
  // after which this layer passes its input through and holds no state.
  void fold_into(Conv2d& conv);

  Var weight, bias;                  // (C)
  Tensor running_mean, running_var;  // (C)
  bool training = true;
  bool folded = false;
  float eps = 1e-5f;
};

// conv -> batch norm (-> ReLU), with the ReLU fused into whichever op runs last: the batch norm, or
// the convolution's bias epilogue once the batch norm is folded into it.
Var conv_bn(const Conv2d& conv, BatchNorm2d& bn, const Var& x, bool relu,
            ActivationLayout layout = ActivationLayout::nchw);

class Linear {
 public:
  Linear() = default;
  // PyTorch's default init: weight and bias uniform in +-1/sqrt(in_features).
  Linear(int64_t in_features, int64_t out_features, Rng& rng);
  Var forward(const Var& x) const;
  void collect(const std::string& prefix, StateList& out);

  Var weight;  // (out, in)
  Var bias;    // (out)
  std::shared_ptr<LayerHooks> hooks;
};

}  // namespace toptag
