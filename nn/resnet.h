// ResNet in torchvision's v1.5 topology (stride on the 3x3 conv of the bottleneck), with the
// paper's classifier head (Duarte et al. 2019): global average pool -> fc1 (1024, ReLU) -> fc2 (2).
//
//   conv1 7x7/2 -> bn1 -> relu -> maxpool 3x3/2 -> layer1..layer4 -> avgpool -> fc1 -> relu -> fc2
//
// The "featurizer" is everything up to the average pool; its output is the features() vector
// (2048 wide for resnet50) that the classifier head reads.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nn/kernels/isa.h"
#include "nn/layers.h"
#include "nn/ops/pool.h"

namespace toptag {

enum class BlockKind { basic, bottleneck };

// The stem's max pool after conv1: 3x3, stride 2, padding 1 (torchvision).
constexpr MaxPool2dParams kStemMaxPool{3, 2, 1};

struct ResNetConfig {
  std::string arch = "resnet50";  // resnet10, resnet18, resnet34, resnet50, resnet101, resnet152
  int64_t in_channels = 1;        // 1: a single-colour jet image; 3: the paper's RGB copies
  int64_t width = 64;             // channels of the stem; torchvision uses 64, smaller is for quick tests
  int64_t hidden = 1024;          // fc1 width
  int64_t classes = 2;            // QCD, top
};

// Known architectures and their block layout.
struct ArchSpec {
  BlockKind block;
  std::vector<int> layers;  // blocks per stage
};
std::optional<ArchSpec> find_arch(const std::string& arch);
std::vector<std::string> known_archs();

class Block;
class FrozenResNet;
struct LayerQuantization;
using LayerQuantizations = std::map<std::string, LayerQuantization>;

// One layer of the network, as ResNet::walk visits them, in forward order:
//   conv "conv1" (+bn1, relu) -> max_pool -> for each block: block_begin, its main-path convs in order
//   (conv1, conv2[, conv3]), its shortcut conv if any (downsample.0 + downsample.1), block_end
//   (residual add, then ReLU) -> global_avg_pool -> linear fc1 (relu) -> linear fc2.
struct LayerStep {
  enum class Kind { conv, max_pool, block_begin, block_end, global_avg_pool, linear };
  Kind kind;
  // state_dict prefix: "conv1", "layer2.0.conv3", "layer2.0.downsample.0", "fc1"; blocks: "layer2.0"
  std::string name;
  Conv2d* conv = nullptr;     // conv: the convolution
  BatchNorm2d* bn = nullptr;  // conv: the batch norm that follows it (folded or not)
  std::string bn_name;        // conv: its state_dict prefix: "bn1", "layer2.0.bn2", "layer2.0.downsample.1"
  // conv: on the block's shortcut path: reads the block's input, not the previous layer's output
  bool shortcut = false;
  bool relu = false;         // conv, linear: a ReLU follows (after the batch norm); block_end: ReLU after the add
  Linear* linear = nullptr;  // linear
  MaxPool2dParams pool{};    // max_pool
  Block* block = nullptr;    // block_begin, block_end
};

// One residual block. Bottleneck: 1x1 -> 3x3 (stride) -> 1x1 (x4 channels). Basic: 3x3 (stride) -> 3x3.
// A 1x1 conv + BN "downsample" path is added when the stride or the channel count changes.
class Block {
 public:
  Block(BlockKind kind, int64_t in_channels, int64_t planes, int stride, Rng& rng);
  // x -> the block's output, by running its steps (ResNet::walk's, from block_begin to block_end).
  Var forward(const Var& x);
  // The block's parameters and buffers under their state_dict keys, named as walk() names its steps.
  void collect(const std::string& name, StateList& out);
  int64_t out_channels() const;

  BlockKind kind;
  Conv2d conv1, conv2, conv3;
  BatchNorm2d bn1, bn2, bn3;
  std::optional<Conv2d> downsample_conv;     // "downsample.0"
  std::optional<BatchNorm2d> downsample_bn;  // "downsample.1"

 private:
  friend class ResNet;
  // This block's steps, block_begin to block_end, named under `name` ("layer2.0"; "" names them "conv1", ...).
  void walk(const std::string& name, const std::function<void(const LayerStep&)>& visit);
};

class ResNet {
 public:
  // Throws toptag::Error for an unknown architecture.
  ResNet(const ResNetConfig& config, uint64_t seed);
  // Not copyable: a copy would share the weights' storage and the frozen plan.
  ResNet(const ResNet&) = delete;
  ResNet& operator=(const ResNet&) = delete;
  ResNet(ResNet&&) = default;
  ResNet& operator=(ResNet&&) = default;

  // images: (N, in_channels, H, W) -> logits (N, classes)
  Var forward(const Var& images);
  // images -> featurizer output (N, feature_dim)
  Var features(const Var& images);
  // features (N, feature_dim) -> logits (N, classes)
  Var head(const Var& features);

  // Every parameter and buffer under its torchvision state_dict key.
  StateList state();
  StateList head_state();  // fc1 and fc2 only
  void set_training(bool training);

  // Folds every batch norm (with its running statistics) into the conv before it: the model then
  // computes the same function as in eval mode, with biased convs and no normalisation layers.
  // A folded model's state lists "<conv>.bias" and no batch-norm tensors.
  void fold_batchnorm();
  bool folded() const { return folded_; }

  // Visits every layer in forward order (LayerStep). This is the one place the topology is spelled
  // out: forward, state, batch-norm folding, the train/eval flag, convs/linears and the ONNX exporter
  // all walk it.
  void walk(const std::function<void(const LayerStep&)>& visit);
  // The same steps, for read-only walkers (the exporter). The pointers in LayerStep are non-const;
  // const callers must not modify through them.
  void walk(const std::function<void(const LayerStep&)>& visit) const;

  // Every conv and linear layer under its state_dict prefix ("layer1.0.conv2", "fc1"), for attaching hooks.
  std::vector<std::pair<std::string, Conv2d*>> convs();
  std::vector<std::pair<std::string, Linear*>> linears();

  // Inference: packs every layer's weights once for this CPU's kernels (nn/inference_plan.h).
  // features(), head() and forward() then run the frozen plan whenever no gradient is recorded
  // (NoGradGuard), and the autograd path otherwise. Needs folded batch norms and no layer hooks.
  // Everything that could change what the plan copied drops it: set_training(true), fold_batchnorm(),
  // and the accessors that hand out the layers (state(), head_state(), convs(), linears()).
  // A quantized model (layer hooks) is frozen from `quantized`, its layers' description (quantize/).
  void freeze(Isa isa = active_isa(), bool winograd = true, const LayerQuantizations* quantized = nullptr);
  void thaw() { frozen_.reset(); }
  const FrozenResNet* frozen() const { return frozen_.get(); }

  // The layout the featurizer computes in when it does not run the frozen plan: channels-last by
  // default (nn/ops/layout.h), NCHW when asked, and NCHW whenever a conv has an input hook
  // (quantization-aware training), whose blocks run along NCHW's channels.
  void set_layout(ActivationLayout layout) { layout_ = layout; }
  ActivationLayout featurizer_layout();

  int64_t feature_dim() const { return feature_dim_; }
  const ResNetConfig& config() const { return config_; }

 private:
  ResNetConfig config_;
  int64_t feature_dim_ = 0;
  bool folded_ = false;
  ActivationLayout layout_ = ActivationLayout::nhwc;
  Conv2d conv1;
  BatchNorm2d bn1;
  std::vector<std::vector<Block>> layers;
  Linear fc1, fc2;
  std::shared_ptr<const FrozenResNet> frozen_;  // shared by concurrent callers: its weights fixed once built
};

}  // namespace toptag
