#include "nn/inference_plan.h"

#include <fmt/format.h>

#include "nn/check.h"
#include "nn/ops/layout.h"

namespace toptag {

namespace {

// When a 3x3 layer runs as Winograd, from bench_conv (BM_Winograd against BM_PackedConv, one AVX-512
// core): it wins from 128 input channels (at 64 its transforms cost what it saves), from 16 tiles
// (2x2 outputs) per call (with fewer, the layer is bound by reading its weights, which Winograd makes
// 16/9 larger), and on maps that fill their tiles (a 5x5 map needs 9 tiles, 36 outputs for 25).
// At 224x224 that is layers 2 to 4; at 40x40, layer 4 from batch 16.
constexpr int64_t kWinogradMinChannels = 128;
constexpr int64_t kWinogradMinTiles = 16;
constexpr double kWinogradMinFill = 0.75;

bool winograd_pays(const Tensor& in) {
  const int64_t N = in.dim(0), P = in.dim(1), Q = in.dim(2), tiles = winograd_tiles(N, P, Q);
  return tiles >= kWinogradMinTiles && static_cast<double>(N * P * Q) >= kWinogradMinFill * 4.0 * tiles;
}

Conv2dParams params_of(const Conv2d& conv) {
  return {conv.params.stride, conv.params.padding};
}

PackedConv pack_layer(const std::string& name, const Conv2d& conv, const BatchNorm2d* bn, Isa isa) {
  if (conv.hooks) fail("cannot freeze {}: it has hooks (a quantized model runs the float emulation)", name);
  if (bn && !bn->folded) fail("cannot freeze {}: its batch norm is not folded (fold_batchnorm first)", name);
  const Tensor* bias = conv.bias.value().defined() ? &conv.bias.value() : nullptr;
  return pack_conv(conv.weight.value(), bias, params_of(conv), isa);
}

PackedConv pack_linear(const std::string& name, const Linear& linear, Isa isa) {
  if (linear.hooks) fail("cannot freeze {}: it has hooks (a quantized model runs the float emulation)", name);
  const Tensor& w = linear.weight.value();
  return pack_conv(w.reshape({w.dim(0), w.dim(1), 1, 1}), &linear.bias.value(), {1, 0}, isa);
}

}  // namespace

FrozenResNet::FrozenResNet(const ResNet& model, Isa isa, bool winograd) : kernels_(&kernels(isa)) {
  in_channels_ = model.config().in_channels;
  feature_dim_ = model.feature_dim();
  std::vector<Op> main_path;  // the current block's convolutions, emitted at its end
  std::optional<Op> shortcut;
  bool in_block = false;
  int linears = 0;
  model.walk([&](const LayerStep& step) {
    switch (step.kind) {
      case LayerStep::Kind::conv: {
        Op op = conv_op(step, isa, winograd);
        if (!in_block) {
          ops_.push_back(std::move(op));
        } else if (step.shortcut) {
          op.in = Slot::block_input;
          op.out = Slot::shortcut;
          shortcut = std::move(op);
        } else {
          main_path.push_back(std::move(op));
        }
        break;
      }
      case LayerStep::Kind::max_pool: {
        Op op;
        op.pool = true;
        op.pool_params = step.pool;
        ops_.push_back(std::move(op));
        break;
      }
      case LayerStep::Kind::block_begin:
        in_block = true;
        main_path.clear();
        shortcut.reset();
        break;
      case LayerStep::Kind::block_end:
        add_block(step, std::move(main_path), std::move(shortcut));
        main_path.clear();
        shortcut.reset();
        in_block = false;
        break;
      case LayerStep::Kind::global_avg_pool:
        break;  // features() ends with it
      case LayerStep::Kind::linear:
        if (linears == 0) {
          fc1_ = pack_linear(step.name, *step.linear, isa);
          fc1_relu_ = step.relu;
        } else if (linears == 1) {
          fc2_ = pack_linear(step.name, *step.linear, isa);
        } else {
          fail("cannot freeze: the head has more than two linear layers ({})", step.name);
        }
        ++linears;
        break;
    }
  });
  if (linears != 2) fail("cannot freeze: expected a head of two linear layers, found {}", linears);
}

FrozenResNet::Op FrozenResNet::conv_op(const LayerStep& step, Isa isa, bool winograd) {
  Op op;
  op.conv = pack_layer(step.name, *step.conv, step.bn, isa);
  if (winograd && winograd_applies(op.conv) && op.conv.C >= kWinogradMinChannels) {
    const Tensor& b = step.conv->bias.value();
    op.winograd = pack_winograd(step.conv->weight.value(), b.defined() ? &b : nullptr, isa);
  }
  op.relu = step.relu;
  return op;
}

void FrozenResNet::add_block(const LayerStep& end, std::vector<Op> main_path, std::optional<Op> shortcut) {
  if (main_path.empty()) fail("cannot freeze {}: a block without convolutions", end.name);
  const bool has_shortcut = shortcut.has_value();
  // The shortcut runs first, so the last main convolution can add it in its output stage.
  if (has_shortcut) main_path.insert(main_path.begin(), std::move(*shortcut));
  main_path.front().starts_block = true;
  Op& last = main_path.back();
  last.add_residual = true;
  last.residual = has_shortcut ? Slot::shortcut : Slot::block_input;
  last.relu = end.relu;
  for (Op& op : main_path) ops_.push_back(std::move(op));
}

Tensor FrozenResNet::features(const Tensor& images) const {
  if (images.rank() != 4 || images.dim(1) != in_channels_)
    fail("model expects images of shape (N, {}, H, W), got {}", in_channels_, images.shape().str());
  Tensor current = nchw_to_nhwc(images), block_input, shortcut;
  for (const Op& op : ops_) {
    if (op.starts_block) block_input = current;
    if (op.pool) {
      current = maxpool_nhwc(current, op.pool_params);
      continue;
    }
    const Tensor& in = op.in == Slot::block_input ? block_input : current;
    const Tensor* residual = !op.add_residual ? nullptr : op.residual == Slot::shortcut ? &shortcut : &block_input;
    // Winograd where the layer has enough tiles to be bound by arithmetic; below that the layer is
    // bound by reading its weights, which Winograd makes 16/9 larger.
    const bool use_winograd = op.winograd && winograd_pays(in);
    Tensor y =
        use_winograd ? conv_winograd(*op.winograd, in, residual, op.relu) : conv_nhwc(op.conv, in, residual, op.relu);
    (op.out == Slot::shortcut ? shortcut : current) = std::move(y);
  }
  return global_avgpool_nhwc(current);
}

Tensor FrozenResNet::head(const Tensor& features) const {
  if (features.rank() != 2 || features.dim(1) != feature_dim_)
    fail("the head expects features of shape (N, {}), got {}", feature_dim_, features.shape().str());
  const int64_t N = features.dim(0);
  const Tensor hidden = conv_nhwc(fc1_, features.reshape({N, 1, 1, feature_dim_}), nullptr, fc1_relu_);
  const Tensor logits = conv_nhwc(fc2_, hidden, nullptr, false);
  return logits.reshape({N, fc2_.K});
}

std::string FrozenResNet::describe() const {
  int64_t floats = static_cast<int64_t>(fc1_.weights.size() + fc2_.weights.size()), convs = 0;
  int64_t winograd = 0;
  for (const Op& op : ops_) {
    if (op.pool) continue;
    floats += static_cast<int64_t>(op.conv.weights.size());
    ++convs;
    if (!op.winograd) continue;
    floats += static_cast<int64_t>(op.winograd->weights.size());
    ++winograd;
  }
  return fmt::format(
      "{} (instruction set {}), {} convolutions ({} also as Winograd F(2x2,3x3)) + 2 linear "
      "layers packed ({:.1f} MB)",
      kernels_->name, isa_name(kernels_->isa), convs, winograd, static_cast<double>(floats) * 4.0 / 1e6);
}

}  // namespace toptag
