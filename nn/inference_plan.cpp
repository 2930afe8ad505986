#include "nn/inference_plan.h"

#include <fmt/format.h>

#include <chrono>

#include "nn/check.h"
#include "nn/ops/layout.h"
#include "nn/profile.h"

namespace toptag {

namespace {

// When a 3x3 layer runs as Winograd, from bench_conv (BM_Winograd against BM_PackedConv, AVX-512 and
// AVX2): it wins from 64 input channels, and from 16 tiles (2x2 outputs) per call (with fewer, the
// layer is bound by reading its weights, which Winograd makes 16/9 larger); at 64 channels, whose
// transforms weigh more against the products, from 128 tiles (a 10x10 map at batch 1, 25 tiles, ran
// 0.016-0.040 ms against the direct kernel's 0.024-0.028 on AVX-512, and slower on AVX2). And on maps
// that fill their tiles (a 5x5 map needs 9 tiles, 36 outputs for 25), and only where it computes
// clearly fewer products (16 a tile) than the direct kernel, which on small maps at a batch of
// several images skips the taps that read padding: on 2x2 maps both compute 16 for 4 outputs, and
// the direct kernel reads 9/16 of the weights.
// At 224x224 that is every stride-1 3x3 layer; at 40x40, layer1's at batches of 6 or more.
constexpr int64_t kWinogradMinChannels = 64;
constexpr int64_t kWinogradMinTiles = 16;
constexpr int64_t kWinogradFewChannels = 128, kWinogradFewChannelsMinTiles = 128;
constexpr double kWinogradMinFill = 0.75;
constexpr double kWinogradMinGain = 1.25;

bool winograd_pays(const PackedConv& direct, const Tensor& in) {
  const int64_t N = in.dim(0), P = in.dim(1), Q = in.dim(2), tiles = winograd_tiles(N, P, Q);
  const int64_t min_tiles = direct.C < kWinogradFewChannels ? kWinogradFewChannelsMinTiles : kWinogradMinTiles;
  return tiles >= min_tiles && static_cast<double>(N * P * Q) >= kWinogradMinFill * 4.0 * tiles &&
         16.0 * static_cast<double>(tiles) * kWinogradMinGain <= conv_nhwc_taps(direct, in);
}

bool has_negative(const Tensor& x) {
  for (float v : x.span())
    if (v < 0) return true;
  return false;
}

Conv2dParams params_of(const Conv2d& conv) {
  return {conv.params.stride, conv.params.padding};
}

}  // namespace

FrozenResNet::FrozenResNet(const ResNet& model, Isa isa, bool winograd, const LayerQuantizations* quantized)
    : kernels_(&kernels(isa)), isa_(isa), winograd_(winograd), quantized_(quantized), quantized_plan_(quantized) {
  in_channels_ = model.config().in_channels;
  feature_dim_ = model.feature_dim();
  std::vector<Op> main_path;  // the current block's convolutions, emitted at its end
  std::optional<Op> shortcut;
  bool in_block = false;
  int linears = 0;
  // Whether the running activation, and the current block's input, follow a ReLU: the integer
  // kernels take only such inputs. The images do not.
  bool current_nonnegative = false, block_input_nonnegative = false;
  model.walk([&](const LayerStep& step) {
    switch (step.kind) {
      case LayerStep::Kind::conv: {
        const bool reads_block_input = in_block && (step.shortcut || main_path.empty());
        Op op = conv_op(step, reads_block_input ? block_input_nonnegative : current_nonnegative);
        current_nonnegative = step.relu;
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
        Op& op = ops_.emplace_back();  // in place: moving an Op with empty optionals trips GCC 12's
        op.pool = true;                // -Wmaybe-uninitialized
        op.pool_params = step.pool;
        op.name = step.name;
        break;
      }
      case LayerStep::Kind::block_begin:
        if (step.name == "layer3.0") split_ = ops_.size();
        in_block = true;
        block_input_nonnegative = current_nonnegative;
        main_path.clear();
        shortcut.reset();
        break;
      case LayerStep::Kind::block_end:
        add_block(step, std::move(main_path), std::move(shortcut));
        current_nonnegative = step.relu;
        main_path.clear();
        shortcut.reset();
        in_block = false;
        break;
      case LayerStep::Kind::global_avg_pool:
        break;  // features() ends with it; an average of non-negative values is non-negative
      case LayerStep::Kind::linear:
        if (linears == 0) {
          fc1_ = linear_op(step, current_nonnegative, true);
        } else if (linears == 1) {
          fc2_ = linear_op(step, current_nonnegative, false);
        } else {
          fail("cannot freeze: the head has more than two linear layers ({})", step.name);
        }
        current_nonnegative = step.relu;
        ++linears;
        break;
    }
  });
  if (linears != 2) fail("cannot freeze: expected a head of two linear layers, found {}", linears);
  quantized_ = nullptr;
  const Op& first = ops_.at(split_);  // a convolution: a block starts with one, and so does the stem
  split_channels_ = first.bfp ? first.bfp->C : first.conv.C;
}

FrozenResNet::Op FrozenResNet::conv_op(const LayerStep& step, bool input_nonnegative) const {
  const Conv2d& conv = *step.conv;
  if (conv.hooks && !quantized_)
    fail("cannot freeze {}: it has hooks (a quantized model is frozen from its layers' quantization)", step.name);
  if (step.bn && !step.bn->folded)
    fail("cannot freeze {}: its batch norm is not folded (fold_batchnorm first)", step.name);
  const Tensor* bias = conv.bias.value().defined() ? &conv.bias.value() : nullptr;
  Op op;
  op.name = step.name;
  op.input_nonnegative = input_nonnegative;
  op.relu = step.relu;
  if (quantized_) {
    quantize_op(op, step.name, bias, params_of(conv));
    if (op.bfp) return op;
  } else {
    op.conv = pack_conv(conv.weight.value(), bias, params_of(conv), isa_);
  }
  if (winograd_ && winograd_applies(op.conv) && op.conv.C >= kWinogradMinChannels)
    op.winograd = std::make_unique<PackedOnFirstUse<WinogradConv>>();
  return op;
}

FrozenResNet::Op FrozenResNet::linear_op(const LayerStep& step, bool input_nonnegative, bool head_input) const {
  const Linear& linear = *step.linear;
  if (linear.hooks && !quantized_)
    fail("cannot freeze {}: it has hooks (a quantized model is frozen from its layers' quantization)", step.name);
  Op op;
  op.name = step.name;
  op.input_nonnegative = input_nonnegative;
  op.relu = step.relu;
  if (quantized_) {
    quantize_op(op, step.name, &linear.bias.value(), {1, 0}, head_input);
  } else {
    const Tensor& w = linear.weight.value();
    op.conv = pack_conv(w.reshape({w.dim(0), w.dim(1), 1, 1}), &linear.bias.value(), {1, 0}, isa_);
  }
  return op;
}

void FrozenResNet::quantize_op(Op& op, const std::string& name, const Tensor* bias, Conv2dParams params,
                               bool keep_float) const {
  auto it = quantized_->find(name);
  if (it == quantized_->end()) fail("cannot freeze {}: the quantized model does not describe it", name);
  const LayerQuantization& q = it->second;
  const Tensor w = q.weight.rank() == 2 ? q.weight.reshape({q.weight.dim(0), q.weight.dim(1), 1, 1}) : q.weight;
  op.quantize_input = q.quantize_input;
  if (q.bfp && op.input_nonnegative && bfp_kernels_apply(q.bfp->weight, q.bfp->input)) {
    const BfpWeight weight{w.dim(0), w.dim(1), w.dim(2), w.dim(3), q.bfp->mantissas, q.bfp->exponents, q.bfp->weight};
    op.bfp = pack_conv_bfp(weight, bias, params, q.bfp->input, isa_);
    op.float_if_negative = keep_float;
  } else if (q.int8 && op.input_nonnegative && int8_tile_takes(*kernels_, q.int8->weights)) {
    // int8 takes negative inputs too (its bytes are affine); 8-bit fixed point first runs its own quantizer.
    op.bfp = pack_conv_int8(w.dim(0), w.dim(1), w.dim(2), w.dim(3), q.int8->weights, q.int8->scales, bias, params,
                            q.int8->input, *kernels_);
    op.integer_quantizes_first = q.int8->fake_quantize_first;
  }
  if (!op.bfp || op.float_if_negative) op.conv = pack_conv(w, bias, params, isa_);
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

Tensor FrozenResNet::run(const Op& op, const Tensor& in, const Tensor* residual, Output to, QuantizedInputCache* cache,
                         const char** kernel) {
  if (op.pool) {
    if (kernel) *kernel = "max pool";
    return maxpool_nhwc(in, op.pool_params);
  }
  if (op.bfp && !(op.float_if_negative && has_negative(in))) {
    const Tensor x = op.integer_quantizes_first ? op.quantize_input(in) : in;
    Tensor y = conv_nhwc_bfp(*op.bfp, x, residual, op.relu, cache, Int8Tile::chosen, to);
    if (kernel && !op.bfp->int8_input)
      *kernel = "bfp integer";
    else if (kernel)  // conv_nhwc_bfp's choice for its output rows
      *kernel = int8_runs_on_words(*op.bfp, y.numel() / y.dim(y.rank() - 1)) ? "int8 words" : "int8 bytes";
    return y;
  }
  const Tensor x = [&] {
    if (!op.quantize_input) return in;
    ProfileScope profile("input fake-quantize");
    return op.quantize_input(in);
  }();
  // Winograd where the layer has enough tiles to be bound by arithmetic (below that the layer is
  // bound by reading its weights, which Winograd makes 16/9 larger) and computes clearly fewer
  // products than the direct kernel.
  if (op.winograd && winograd_pays(op.conv, x)) {
    if (kernel)
      *kernel = op.quantize_input ? "f32 Winograd F(2x2,3x3), input fake-quantized" : "f32 Winograd F(2x2,3x3)";
    return conv_winograd(op.winograd->get([&] { return pack_winograd(op.conv); }), x, residual, op.relu, to);
  }
  if (kernel) *kernel = op.quantize_input ? "f32 direct, input fake-quantized" : "f32 direct";
  return conv_nhwc(op.conv, x, residual, op.relu, to);
}

Tensor FrozenResNet::run_timed(size_t index, const Op& op, const Tensor& in, const Tensor* residual, Output to,
                               QuantizedInputCache* cache) const {
  if (!timing_.load(std::memory_order_relaxed)) return run(op, in, residual, to, cache);
  const char* kernel = "";
  const auto start = std::chrono::steady_clock::now();
  Tensor y = run(op, in, residual, to, cache, &kernel);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const ConvShape& shape = op.bfp ? static_cast<const ConvShape&>(*op.bfp) : op.conv;
  const double rows = static_cast<double>(y.numel() / y.dim(y.rank() - 1));
  const double macs = op.pool ? 0 : rows * static_cast<double>(shape.K * shape.C * shape.taps());
  record_time(index, kernel, y, macs, seconds);
  return y;
}

bool FrozenResNet::pool_follows(size_t i, size_t end) const {
  if (i + 1 >= end) return false;
  const Op &op = ops_[i], &next = ops_[i + 1];
  const bool plain_conv = !op.pool && !op.bfp && !op.quantize_input && !op.winograd && !op.add_residual;
  return plain_conv && op.out == Slot::current && next.pool && !next.starts_block && next.in == Slot::current &&
         next.out == Slot::current;
}

Tensor FrozenResNet::run_pooled(size_t i, const Tensor& in) const {
  const Op &op = ops_[i], &pool = ops_[i + 1];
  if (!timing_.load(std::memory_order_relaxed)) return conv_nhwc_maxpool(op.conv, in, op.relu, pool.pool_params);
  const auto start = std::chrono::steady_clock::now();
  Tensor y = conv_nhwc_maxpool(op.conv, in, op.relu, pool.pool_params);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double rows =
      static_cast<double>(in.dim(0) * op.conv.out_size(in.dim(1), op.conv.R) * op.conv.out_size(in.dim(2), op.conv.S));
  record_time(i, "f32 direct, max pool in its output stage", y,
              rows * static_cast<double>(op.conv.K * op.conv.C * op.conv.taps()), seconds);
  record_time(i + 1, "max pool, in the layer before's output stage", y, 0, 0);
  return y;
}

void FrozenResNet::record_time(size_t index, const char* kernel, const Tensor& out, double macs, double seconds) const {
  std::lock_guard lock(times_mutex_);
  if (index >= times_.size()) return;  // timing was turned off meanwhile
  LayerTime& t = times_[index];
  t.kernel = kernel;
  if (t.calls == 0)
    for (int d = 0; d < out.rank(); ++d) t.output += (d ? "x" : "") + std::to_string(out.dim(d));
  t.macs += macs;
  t.seconds += seconds;
  ++t.calls;
}

void FrozenResNet::time_layers(bool on) const {
  std::lock_guard lock(times_mutex_);
  times_.clear();
  if (on) {
    for (const Op& op : ops_) times_.emplace_back().layer = op.name;
    times_.emplace_back().layer = fc1_.name;
    times_.emplace_back().layer = fc2_.name;
  }
  timing_ = on;
}

std::vector<LayerTime> FrozenResNet::layer_times() const {
  std::lock_guard lock(times_mutex_);
  std::vector<LayerTime> out;
  for (const LayerTime& t : times_)
    if (t.calls > 0) out.push_back(t);
  return out;
}

Tensor FrozenResNet::features(const Tensor& images) const {
  return finish_features(begin_features(images));
}

Tensor FrozenResNet::begin_features(const Tensor& images) const {
  if (images.rank() != 4 || images.dim(1) != in_channels_)
    fail("model expects images of shape (N, {}, H, W), got {}", in_channels_, images.shape().str());
  return run_ops(nchw_to_nhwc(images), 0, split_);
}

Tensor FrozenResNet::finish_features(const Tensor& partial) const {
  if (partial.rank() != 4 || partial.dim(3) != split_channels_)
    fail("finish_features expects (N, H, W, {}) from begin_features, got {}", split_channels_, partial.shape().str());
  return run_ops(partial, split_, ops_.size());
}

Tensor FrozenResNet::run_ops(Tensor current, size_t begin, size_t end) const {
  Tensor block_input, shortcut;
  QuantizedInputCache cache;  // a block's input, quantized once for its shortcut and first convolution
  for (size_t i = begin; i < end; ++i) {
    const Op& op = ops_[i];
    if (op.starts_block) block_input = current;
    const Tensor& in = op.in == Slot::block_input ? block_input : current;
    if (pool_follows(i, end)) {  // the stem: its map, the network's largest, never goes through memory
      current = run_pooled(i, in);
      ++i;
      continue;
    }
    const Tensor* residual = !op.add_residual ? nullptr : op.residual == Slot::shortcut ? &shortcut : &block_input;
    // A residual that nothing else holds (not the caller, not the input, not the quantized input
    // cache) is dead after this add: the output goes over it.
    const bool dead = residual && residual->sole_owner() && !residual->shares_storage_with(in);
    const Output to = dead ? Output::over_residual : Output::fresh;
    (op.out == Slot::shortcut ? shortcut : current) = run_timed(i, op, in, residual, to, &cache);
    // The shortcut is spent: holding it would keep the block's output (written over it) from being
    // the next block's sole residual.
    if (residual == &shortcut) shortcut = Tensor();
  }
  return end == ops_.size() ? global_avgpool_nhwc(current) : current;
}

Tensor FrozenResNet::head(const Tensor& features) const {
  if (features.rank() != 2 || features.dim(1) != feature_dim_)
    fail("the head expects features of shape (N, {}), got {}", feature_dim_, features.shape().str());
  const int64_t N = features.dim(0);
  const Tensor hidden = run_timed(ops_.size(), fc1_, features.reshape({N, 1, 1, feature_dim_}), nullptr);
  const Tensor logits = run_timed(ops_.size() + 1, fc2_, hidden, nullptr);
  return logits.reshape({N, logits.dim(3)});
}

std::string FrozenResNet::describe() const {
  int64_t bytes = 0, convs = 0, winograd = 0, winograd_packed = 0, integer = 0, words = 0, words_packed = 0,
          fake_quantized = 0;
  auto count = [&](const Op& op) {
    bytes += static_cast<int64_t>(op.conv.weights.size() * sizeof(float));
    if (op.winograd) {
      const int64_t packed = op.winograd->packed_bytes();
      bytes += packed;
      ++winograd;
      winograd_packed += packed > 0;
    }
    if (op.bfp) {
      bytes += static_cast<int64_t>(op.bfp->weights.size() + op.bfp->steps.size() * sizeof(float));
      ++integer;
      if (op.bfp->words) {
        const int64_t packed = op.bfp->words->packed_bytes();
        bytes += packed;
        ++words;
        words_packed += packed > 0;
      }
    }
    if (op.quantize_input && !op.bfp) ++fake_quantized;
  };
  for (const Op& op : ops_) {
    if (op.pool) continue;
    count(op);
    ++convs;
  }
  count(fc1_);
  count(fc2_);
  std::string text = fmt::format(
      "{} (instruction set {}), {} convolutions ({} may run as Winograd F(2x2,3x3), packed on first use: {} so "
      "far) + 2 linear layers packed ({:.1f} MB)",
      kernels_->name, isa_name(kernels_->isa), convs, winograd, winograd_packed, static_cast<double>(bytes) / 1e6);
  if (quantized_plan_)
    text += fmt::format(
        "; quantized: {} of {} layers on integer kernels ({}), the rest on float kernels over their decoded "
        "weights ({} with quantized inputs)",
        integer, convs + 2, kernels_->bfp_name, fake_quantized);
  if (words > 0)
    text +=
        fmt::format("; {} int8 layers may run on 16-bit words (from 48 output rows), packed on first use: {} so far",
                    words, words_packed);
  return text;
}

}  // namespace toptag
