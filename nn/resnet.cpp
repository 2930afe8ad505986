#include "nn/resnet.h"

#include <fmt/format.h>

#include <map>

#include "nn/check.h"
#include "nn/ops/elementwise.h"

namespace toptag {

namespace {

const std::map<std::string, ArchSpec>& arch_table() {
  static const std::map<std::string, ArchSpec> table = {
      {"resnet10", {BlockKind::basic, {1, 1, 1, 1}}},        {"resnet18", {BlockKind::basic, {2, 2, 2, 2}}},
      {"resnet34", {BlockKind::basic, {3, 4, 6, 3}}},        {"resnet50", {BlockKind::bottleneck, {3, 4, 6, 3}}},
      {"resnet101", {BlockKind::bottleneck, {3, 4, 23, 3}}}, {"resnet152", {BlockKind::bottleneck, {3, 8, 36, 3}}},
  };
  return table;
}

constexpr int kBottleneckExpansion = 4;

}  // namespace

std::optional<ArchSpec> find_arch(const std::string& arch) {
  auto it = arch_table().find(arch);
  if (it == arch_table().end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> known_archs() {
  std::vector<std::string> names;
  for (const auto& [name, spec] : arch_table()) names.push_back(name);
  return names;
}

Block::Block(BlockKind kind_, int64_t in_channels, int64_t planes, int stride, Rng& rng) : kind(kind_) {
  if (kind == BlockKind::bottleneck) {
    conv1 = Conv2d(in_channels, planes, 1, {1, 0}, rng);
    bn1 = BatchNorm2d(planes);
    conv2 = Conv2d(planes, planes, 3, {stride, 1}, rng);
    bn2 = BatchNorm2d(planes);
    conv3 = Conv2d(planes, planes * kBottleneckExpansion, 1, {1, 0}, rng);
    bn3 = BatchNorm2d(planes * kBottleneckExpansion);
  } else {
    conv1 = Conv2d(in_channels, planes, 3, {stride, 1}, rng);
    bn1 = BatchNorm2d(planes);
    conv2 = Conv2d(planes, planes, 3, {1, 1}, rng);
    bn2 = BatchNorm2d(planes);
  }
  if (stride != 1 || in_channels != out_channels()) {
    downsample_conv = Conv2d(in_channels, out_channels(), 1, {stride, 0}, rng);
    downsample_bn = BatchNorm2d(out_channels());
  }
}

int64_t Block::out_channels() const {
  const int64_t planes = conv1.weight.shape()[0];
  return kind == BlockKind::bottleneck ? planes * kBottleneckExpansion : planes;
}

Var Block::forward(const Var& x) {
  const bool bottleneck = kind == BlockKind::bottleneck;
  Var out = conv_bn(conv1, bn1, x, true);
  out = conv_bn(conv2, bn2, out, bottleneck);
  if (bottleneck) out = conv_bn(conv3, bn3, out, false);
  Var identity = downsample_conv ? conv_bn(*downsample_conv, *downsample_bn, x, false) : x;
  return add_relu(out, identity);
}

void Block::collect(const std::string& prefix, StateList& out) {
  conv1.collect(prefix + "conv1.", out);
  bn1.collect(prefix + "bn1.", out);
  conv2.collect(prefix + "conv2.", out);
  bn2.collect(prefix + "bn2.", out);
  if (kind == BlockKind::bottleneck) {
    conv3.collect(prefix + "conv3.", out);
    bn3.collect(prefix + "bn3.", out);
  }
  if (downsample_conv) {
    downsample_conv->collect(prefix + "downsample.0.", out);
    downsample_bn->collect(prefix + "downsample.1.", out);
  }
}

void Block::fold_batchnorm() {
  bn1.fold_into(conv1);
  bn2.fold_into(conv2);
  if (kind == BlockKind::bottleneck) bn3.fold_into(conv3);
  if (downsample_bn) downsample_bn->fold_into(*downsample_conv);
}

void Block::set_training(bool training) {
  bn1.training = bn2.training = bn3.training = training;
  if (downsample_bn) downsample_bn->training = training;
}

ResNet::ResNet(const ResNetConfig& config, uint64_t seed) : config_(config) {
  std::optional<ArchSpec> spec = find_arch(config.arch);
  if (!spec) fail("unknown architecture '{}' (known: {})", config.arch, fmt::join(known_archs(), ", "));
  if (config.in_channels < 1 || config.width < 1 || config.hidden < 1 || config.classes < 2)
    fail("invalid model size: in_channels {}, width {}, hidden {}, classes {}", config.in_channels, config.width,
         config.hidden, config.classes);
  Rng rng(seed);
  conv1 = Conv2d(config.in_channels, config.width, 7, {2, 3}, rng);
  bn1 = BatchNorm2d(config.width);
  int64_t channels = config.width;
  for (size_t stage = 0; stage < spec->layers.size(); ++stage) {
    const int64_t planes = config.width << stage;
    std::vector<Block> blocks;
    for (int b = 0; b < spec->layers[stage]; ++b) {
      const int stride = (stage > 0 && b == 0) ? 2 : 1;
      blocks.emplace_back(spec->block, channels, planes, stride, rng);
      channels = blocks.back().out_channels();
    }
    layers.push_back(std::move(blocks));
  }
  feature_dim_ = channels;
  fc1 = Linear(feature_dim_, config.hidden, rng);
  fc2 = Linear(config.hidden, config.classes, rng);
}

Var ResNet::features(const Var& images) {
  if (images.shape().rank() != 4 || images.shape()[1] != config_.in_channels)
    fail("model expects images of shape (N, {}, H, W), got {}", config_.in_channels, images.shape().str());
  Var x = maxpool2d(conv_bn(conv1, bn1, images, true), kStemMaxPool);
  for (auto& stage : layers)
    for (auto& block : stage) x = block.forward(x);
  return global_avgpool(x);
}

Var ResNet::head(const Var& features) {
  return fc2.forward(relu(fc1.forward(features)));
}

Var ResNet::forward(const Var& images) {
  return head(features(images));
}

StateList ResNet::state() {
  StateList out;
  conv1.collect("conv1.", out);
  bn1.collect("bn1.", out);
  for (size_t s = 0; s < layers.size(); ++s)
    for (size_t b = 0; b < layers[s].size(); ++b) layers[s][b].collect(fmt::format("layer{}.{}.", s + 1, b), out);
  StateList h = head_state();
  out.parameters.insert(out.parameters.end(), h.parameters.begin(), h.parameters.end());
  return out;
}

StateList ResNet::head_state() {
  StateList out;
  fc1.collect("fc1.", out);
  fc2.collect("fc2.", out);
  return out;
}

void ResNet::fold_batchnorm() {
  bn1.fold_into(conv1);
  for (auto& stage : layers)
    for (auto& block : stage) block.fold_batchnorm();
  folded_ = true;
}

std::vector<std::pair<std::string, Conv2d*>> ResNet::convs() {
  std::vector<std::pair<std::string, Conv2d*>> out{{"conv1", &conv1}};
  for (size_t s = 0; s < layers.size(); ++s)
    for (size_t b = 0; b < layers[s].size(); ++b) {
      Block& block = layers[s][b];
      const std::string prefix = fmt::format("layer{}.{}.", s + 1, b);
      out.emplace_back(prefix + "conv1", &block.conv1);
      out.emplace_back(prefix + "conv2", &block.conv2);
      if (block.kind == BlockKind::bottleneck) out.emplace_back(prefix + "conv3", &block.conv3);
      if (block.downsample_conv) out.emplace_back(prefix + "downsample.0", &*block.downsample_conv);
    }
  return out;
}

std::vector<std::pair<std::string, Linear*>> ResNet::linears() {
  return {{"fc1", &fc1}, {"fc2", &fc2}};
}

void ResNet::set_training(bool training) {
  bn1.training = training;
  for (auto& stage : layers)
    for (auto& block : stage) block.set_training(training);
}

}  // namespace toptag
