#include "nn/resnet.h"

#include <fmt/format.h>

#include <functional>
#include <map>

#include "nn/check.h"
#include "nn/inference_plan.h"
#include "nn/ops/elementwise.h"
#include "nn/ops/pool.h"

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

// The steps ResNet::walk visits; fields a kind does not use keep LayerStep's defaults.
LayerStep make_step(LayerStep::Kind kind, std::string name) {
  LayerStep step{};
  step.kind = kind;
  step.name = std::move(name);
  return step;
}

LayerStep conv_step(std::string name, Conv2d& conv, std::string bn_name, BatchNorm2d& bn, bool relu) {
  LayerStep step = make_step(LayerStep::Kind::conv, std::move(name));
  step.conv = &conv;
  step.bn = &bn;
  step.bn_name = std::move(bn_name);
  step.relu = relu;
  return step;
}

LayerStep block_step(LayerStep::Kind kind, const std::string& name, Block& block, bool relu) {
  LayerStep step = make_step(kind, name);
  step.block = &block;
  step.relu = relu;
  return step;
}

LayerStep linear_step(std::string name, Linear& linear, bool relu) {
  LayerStep step = make_step(LayerStep::Kind::linear, std::move(name));
  step.linear = &linear;
  step.relu = relu;
  return step;
}

// A step's parameters and buffers under their state_dict keys: a conv's, then its batch norm's (none
// once folded), or a linear layer's.
void collect_state(const LayerStep& step, StateList& out) {
  if (step.kind == LayerStep::Kind::conv) {
    step.conv->collect(step.name + ".", out);
    step.bn->collect(step.bn_name + ".", out);
  } else if (step.kind == LayerStep::Kind::linear) {
    step.linear->collect(step.name + ".", out);
  }
}

// The forward pass as an interpreter over the walk's steps, so that a new kind of layer is added in
// one place. It runs the same ops in the same order as a hand-written forward (the same numbers, bit
// for bit) and keeps no activation longer: each step's output replaces the last one, and only the
// current block's input (which the shortcut conv and the residual add read) is held until block_end,
// as a block's forward holds its argument.
//
// Channels-last, the images are turned to (N,H,W,C) once before the first step; every op after that
// runs in that layout, up to the global average pool, whose (N, C) output is the same in both.
class ForwardRun {
 public:
  explicit ForwardRun(Var x, ActivationLayout layout = ActivationLayout::nchw)
      : x_(layout == ActivationLayout::nhwc ? to_channels_last(x) : std::move(x)), layout_(layout) {}

  void operator()(const LayerStep& step) {
    switch (step.kind) {
      case LayerStep::Kind::conv:
        if (step.shortcut)
          shortcut_ = conv_bn(*step.conv, *step.bn, *block_input_, step.relu, layout_);
        else
          x_ = conv_bn(*step.conv, *step.bn, x_, step.relu, layout_);
        break;
      case LayerStep::Kind::max_pool:
        x_ = layout_ == ActivationLayout::nhwc ? maxpool2d_nhwc(x_, step.pool) : maxpool2d(x_, step.pool);
        break;
      case LayerStep::Kind::block_begin:
        block_input_ = x_;
        break;
      case LayerStep::Kind::block_end: {
        const Var& identity = shortcut_ ? *shortcut_ : *block_input_;
        x_ = step.relu ? add_relu(x_, identity) : add(x_, identity);
        block_input_.reset();
        shortcut_.reset();
        break;
      }
      case LayerStep::Kind::global_avg_pool:
        x_ = layout_ == ActivationLayout::nhwc ? global_avgpool_nhwc(x_) : global_avgpool(x_);
        break;
      case LayerStep::Kind::linear:
        x_ = step.linear->forward(x_);
        if (step.relu) x_ = relu(x_);
        break;
    }
  }

  const Var& output() const { return x_; }

 private:
  Var x_;  // the last step's output
  ActivationLayout layout_;
  std::optional<Var> block_input_;  // from block_begin to block_end
  std::optional<Var> shortcut_;     // the shortcut conv's output, when the block has one
};

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

void Block::walk(const std::string& name, const std::function<void(const LayerStep&)>& visit) {
  const std::string prefix = name.empty() ? "" : name + ".";
  const bool bottleneck = kind == BlockKind::bottleneck;
  visit(block_step(LayerStep::Kind::block_begin, name, *this, false));
  visit(conv_step(prefix + "conv1", conv1, prefix + "bn1", bn1, true));
  visit(conv_step(prefix + "conv2", conv2, prefix + "bn2", bn2, bottleneck));
  if (bottleneck) visit(conv_step(prefix + "conv3", conv3, prefix + "bn3", bn3, false));
  if (downsample_conv) {
    LayerStep shortcut =
        conv_step(prefix + "downsample.0", *downsample_conv, prefix + "downsample.1", *downsample_bn, false);
    shortcut.shortcut = true;
    visit(shortcut);
  }
  visit(block_step(LayerStep::Kind::block_end, name, *this, true));
}

Var Block::forward(const Var& x) {
  ForwardRun run(x);
  walk("", std::ref(run));
  return run.output();
}

void Block::collect(const std::string& name, StateList& out) {
  walk(name, [&](const LayerStep& step) { collect_state(step, out); });
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

void ResNet::walk(const std::function<void(const LayerStep&)>& visit) {
  visit(conv_step("conv1", conv1, "bn1", bn1, true));
  LayerStep pool = make_step(LayerStep::Kind::max_pool, "maxpool");
  pool.pool = kStemMaxPool;
  visit(pool);
  for (size_t s = 0; s < layers.size(); ++s)
    for (size_t b = 0; b < layers[s].size(); ++b) layers[s][b].walk(fmt::format("layer{}.{}", s + 1, b), visit);
  visit(make_step(LayerStep::Kind::global_avg_pool, "avgpool"));
  visit(linear_step("fc1", fc1, true));
  visit(linear_step("fc2", fc2, false));
}

void ResNet::walk(const std::function<void(const LayerStep&)>& visit) const {
  // The steps are the same; LayerStep's pointers are non-const, and the caller promises not to write through them.
  const_cast<ResNet*>(this)->walk(visit);
}

// The featurizer is every step before the head's linear layers; the head is those linear layers.
Var ResNet::features(const Var& images) {
  if (images.shape().rank() != 4 || images.shape()[1] != config_.in_channels)
    fail("model expects images of shape (N, {}, H, W), got {}", config_.in_channels, images.shape().str());
  if (frozen_ && !grad_enabled()) return Var(frozen_->features(images.value()));
  ForwardRun run(images, featurizer_layout());
  walk([&](const LayerStep& step) {
    if (step.kind != LayerStep::Kind::linear) run(step);
  });
  return run.output();
}

Var ResNet::head(const Var& features) {
  if (frozen_ && !grad_enabled()) return Var(frozen_->head(features.value()));
  ForwardRun run(features);
  walk([&](const LayerStep& step) {
    if (step.kind == LayerStep::Kind::linear) run(step);
  });
  return run.output();
}

Var ResNet::forward(const Var& images) {
  return head(features(images));
}

ActivationLayout ResNet::featurizer_layout() {
  if (layout_ == ActivationLayout::nchw) return layout_;
  bool hooked = false;
  walk([&](const LayerStep& step) { hooked = hooked || (step.conv && step.conv->has_input_hook()); });
  return hooked ? ActivationLayout::nchw : layout_;
}

StateList ResNet::state() {
  frozen_.reset();  // the caller may change weights or attach hooks through what it returns
  StateList out;
  walk([&](const LayerStep& step) { collect_state(step, out); });
  return out;
}

StateList ResNet::head_state() {
  frozen_.reset();  // the caller may change weights or attach hooks through what it returns
  StateList out;
  walk([&](const LayerStep& step) {
    if (step.kind == LayerStep::Kind::linear) collect_state(step, out);
  });
  return out;
}

void ResNet::freeze(Isa isa, bool winograd, const LayerQuantizations* quantized) {
  frozen_ = std::make_shared<const FrozenResNet>(*this, isa, winograd, quantized);
}

void ResNet::fold_batchnorm() {
  frozen_.reset();
  walk([](const LayerStep& step) {
    if (step.kind == LayerStep::Kind::conv) step.bn->fold_into(*step.conv);
  });
  folded_ = true;
}

std::vector<std::pair<std::string, Conv2d*>> ResNet::convs() {
  frozen_.reset();  // the caller may change weights or attach hooks through what it returns
  std::vector<std::pair<std::string, Conv2d*>> out;
  walk([&](const LayerStep& step) {
    if (step.kind == LayerStep::Kind::conv) out.emplace_back(step.name, step.conv);
  });
  return out;
}

std::vector<std::pair<std::string, Linear*>> ResNet::linears() {
  frozen_.reset();  // the caller may change weights or attach hooks through what it returns
  std::vector<std::pair<std::string, Linear*>> out;
  walk([&](const LayerStep& step) {
    if (step.kind == LayerStep::Kind::linear) out.emplace_back(step.name, step.linear);
  });
  return out;
}

void ResNet::set_training(bool training) {
  if (training) frozen_.reset();
  walk([=](const LayerStep& step) {
    if (step.kind == LayerStep::Kind::conv) step.bn->training = training;
  });
}

}  // namespace toptag
