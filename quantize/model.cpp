#include "quantize/model.h"

#include <fmt/format.h>

#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>

#include "nn/check.h"

namespace toptag {

namespace {

constexpr std::pair<SteMode, const char*> kSteNames[] = {{SteMode::masked, "masked"}, {SteMode::identity, "identity"}};

}  // namespace

SteMode parse_ste(const std::string& name) {
  for (const auto& [mode, text] : kSteNames)
    if (name == text) return mode;
  fail("unknown straight-through estimator '{}' (masked, identity)", name);
}

const char* ste_name(SteMode mode) {
  for (const auto& [m, text] : kSteNames)
    if (m == mode) return text;
  return "unknown";
}

std::string QuantizationConfig::describe() const {
  return fmt::format("weights {}, activations {}, {} STE", weights.str(), activations ? activations->str() : "float32",
                     ste_name(ste));
}

QuantizationConfig make_quantization(const std::string& weights, const std::string& activations,
                                     const std::string& ste) {
  QuantizationConfig c;
  c.weights = Format::parse(weights);
  // Refused rather than clamped: conv and linear weights are about half negative, so an unsigned
  // weight format would zero them (SAT) or turn them into large positive values (WRAP) in silence.
  if (c.weights.kind == FormatKind::fixed && !c.weights.is_signed)
    fail(
        "weight format '{}' is unsigned, but weights are negative as often as positive: use a signed format "
        "(fixed, ap_fixed, ap_int) for weights; unsigned ones suit activations after a ReLU",
        weights);
  if (!activations.empty()) c.activations = Format::parse(activations);
  c.ste = parse_ste(ste);
  return c;
}

namespace {

// /quantization/ranges is two levels deep ("layer1/0.conv1" is impossible, but a file may nest);
// deeper nesting is not toptag's and is not followed.
constexpr int kMaxRangeDepth = 4;
// Encodings are decoded in float32: allow the last bit of rounding between the decoded value and
// the quantizer's own float result.
constexpr float kEncodingTolerance = 1e-6f;

std::shared_ptr<LayerHooks> quantizing_hooks(const std::string& name, std::shared_ptr<QuantizationConfig> config) {
  auto hooks = std::make_shared<LayerHooks>();
  hooks->weight = [config](const Var& w) {
    return fake_quantize(
        w, [config](const Tensor& x, Tensor& y, Tensor& ok) { quantize_tensor(config->weights, true, x, y, &ok); },
        config->ste);
  };
  if (config->activations) {
    hooks->input = [config, name](const Var& x) {
      const AffineRange* range = nullptr;
      if (config->activations->kind == FormatKind::int8) {
        auto it = config->ranges.find(name);
        if (it == config->ranges.end()) fail("layer '{}' has no calibrated int8 input range", name);
        range = &it->second;
      }
      return fake_quantize(
          x,
          [config, range](const Tensor& in, Tensor& y, Tensor& ok) {
            quantize_tensor(*config->activations, false, in, y, &ok, range);
          },
          config->ste);
    };
  }
  return hooks;
}

template <class Fn>
void for_each_layer(ResNet& model, Fn fn) {
  for (auto& [name, conv] : model.convs()) fn(name, conv->hooks, conv->weight);
  for (auto& [name, lin] : model.linears()) fn(name, lin->hooks, lin->weight);
}

}  // namespace

void attach_quantization(ResNet& model, std::shared_ptr<QuantizationConfig> config) {
  if (!model.folded()) model.fold_batchnorm();
  for_each_layer(model, [&](const std::string& name, std::shared_ptr<LayerHooks>& hooks, Var&) {
    hooks = quantizing_hooks(name, config);
  });
}

void freeze_for_inference(ResNet& model, const QuantizationConfig& config) {
  const Format weights = config.weights;
  for_each_layer(model, [&](const std::string&, std::shared_ptr<LayerHooks>& hooks, Var& weight) {
    Tensor q = Tensor::empty(weight.shape());
    quantize_tensor(weights, true, weight.value(), q, nullptr);  // what the weight hook computes each time
    auto frozen = std::make_shared<LayerHooks>(*hooks);
    frozen->weight = [q](const Var&) { return Var(q); };
    hooks = frozen;
  });
}

namespace {

// Fixed point whose integers fit the kernels' bytes (signed weights; activations signed or not), and
// whose LSB a float holds: the int8 kernels run it.
bool fixed_bytes(const Format& f, bool weight) {
  return f.kind == FormatKind::fixed && f.width <= 8 && (f.is_signed || !weight) && std::abs(f.integer - f.width) < 100;
}

// The integer kernels take finite weights only: a NaN or inf (a damaged model) keeps its layer on the
// float kernels, whose result is the emulation's NaN.
bool finite(const Tensor& t) {
  for (float v : t.span())
    if (!std::isfinite(v)) return false;
  return true;
}

}  // namespace

namespace {

// Which integer kernels a configuration's layers can run on (nn/inference_plan.h).
enum class IntegerPath { none, bfp, int8, fixed };

IntegerPath integer_path(const QuantizationConfig& c) {
  if (!c.activations) return IntegerPath::none;
  if (c.weights.kind == FormatKind::bfp && c.activations->kind == FormatKind::bfp) return IntegerPath::bfp;
  if (c.weights.kind == FormatKind::int8 && c.activations->kind == FormatKind::int8) return IntegerPath::int8;
  if (fixed_bytes(c.weights, true) && fixed_bytes(*c.activations, false)) return IntegerPath::fixed;
  return IntegerPath::none;
}

// The input hook's quantizer on a channels-last input: viewed as (pixels, C), its blocks run along
// the channels, as they do along NCHW's channel axis. int8 uses the kernels' vectorised quantizer,
// the same function (tests/test_bfp_kernels.cpp).
std::function<Tensor(const Tensor&)> input_quantizer(const Format& format, const std::optional<AffineRange>& range) {
  if (range)
    return [affine = AffineU8{range->scale(), range->zero_point()}](const Tensor& x) {
      Tensor y = Tensor::empty(x.shape());
      fake_quantize_u8(x.data(), x.numel(), affine, y.data());
      return y;
    };
  // Block floating point in float where that is exact (nn/kernels/bfp.h): 4.7x faster than the
  // emulation's double arithmetic on the stem's 3-channel blocks.
  std::optional<BlockFormat> in_float;
  if (format.kind == FormatKind::bfp && fake_quantize_bfp_exact_in_float(block_format(format)))
    in_float = block_format(format);
  return [format, in_float](const Tensor& x) {
    const int64_t C = x.dim(x.rank() - 1);
    const Tensor flat = x.reshape({x.numel() / C, C});
    Tensor y = Tensor::empty(flat.shape());
    if (in_float)
      fake_quantize_bfp(flat.data(), flat.dim(0), C, *in_float, y.data());
    else
      quantize_tensor(format, false, flat, y, nullptr);
    return y.reshape(x.shape());
  };
}

}  // namespace

LayerQuantizations plan_layers(ResNet& model, const QuantizationConfig& config) {
  LayerQuantizations layers;
  const IntegerPath path = integer_path(config);
  for_each_layer(model, [&](const std::string& name, std::shared_ptr<LayerHooks>&, Var& weight) {
    LayerQuantization& q = layers[name];
    const Tensor& w = weight.value();
    std::optional<AffineRange> range;
    if (config.activations && config.activations->kind == FormatKind::int8) {
      auto it = config.ranges.find(name);
      if (it == config.ranges.end()) fail("layer '{}' has no calibrated int8 input range", name);
      range = it->second;
    }
    if (config.activations) q.quantize_input = input_quantizer(*config.activations, range);
    if (path == IntegerPath::none || !finite(w)) {
      q.weight = Tensor::empty(w.shape());
      quantize_tensor(config.weights, true, w, q.weight, nullptr);  // as the weight hook
      return;
    }
    // One encoding serves both paths: its decoded values are exactly the weight hook's.
    EncodedTensor e = encode_weight(config.weights, w);
    q.weight = decode_weight(config.weights, e, w.shape());
    switch (path) {
      case IntegerPath::bfp:
        q.bfp = LayerQuantization::Bfp{std::move(e.integers), std::move(e.exponents), block_format(config.weights),
                                       block_format(*config.activations)};
        break;
      case IntegerPath::int8:
        q.int8 = LayerQuantization::Int8{std::move(e.integers), std::move(e.scales),
                                         AffineU8{range->scale(), range->zero_point()}};
        break;
      case IntegerPath::fixed:  // integers value / LSB; a signed input's bytes are offset by 128
        q.int8 = LayerQuantization::Int8{
            std::move(e.integers),
            std::vector<float>(static_cast<size_t>(w.dim(0)), static_cast<float>(fixed_lsb(config.weights))),
            AffineU8{static_cast<float>(fixed_lsb(*config.activations)), config.activations->is_signed ? 128 : 0},
            true};
        break;
      case IntegerPath::none:
        break;
    }
  });
  return layers;
}

int64_t calibrate(ResNet& model, QuantizationConfig& config, const BatchSourceFn& next_batch) {
  if (!model.folded()) model.fold_batchnorm();
  config.ranges.clear();
  // Observers see the input each layer receives from the (weight-quantized) layers before it.
  auto observed = std::make_shared<QuantizationConfig>(config);
  observed->activations.reset();
  for_each_layer(model, [&](const std::string& name, std::shared_ptr<LayerHooks>& hooks, Var&) {
    hooks = quantizing_hooks(name, observed);
    hooks->input = [&config, name](const Var& x) {
      AffineRange& r =
          config.ranges
              .try_emplace(name, AffineRange{std::numeric_limits<float>::max(), std::numeric_limits<float>::lowest()})
              .first->second;
      for (float v : x.value().span()) r.min = std::min(r.min, v), r.max = std::max(r.max, v);
      return x;
    };
  });
  NoGradGuard no_grad;
  model.set_training(false);
  int64_t seen = 0;
  while (std::optional<Tensor> batch = next_batch()) {
    model.forward(Var(*batch));
    seen += batch->dim(0);
  }
  if (seen == 0) fail("calibration saw no images");
  return seen;
}

void write_quantization(hid_t file, ResNet& model, const QuantizationConfig& config) {
  H5Id q = h5_group(file, "quantization", true);
  h5_set_attr(q.get(), "weights", config.weights.str());
  h5_set_attr(q.get(), "activations", config.activations ? config.activations->str() : std::string());
  h5_set_attr(q.get(), "ste", std::string(ste_name(config.ste)));
  for (const auto& [name, r] : config.ranges) {
    H5Id g = h5_group(q.get(), "ranges/" + name, true);
    h5_set_attr(g.get(), "min", static_cast<double>(r.min));
    h5_set_attr(g.get(), "max", static_cast<double>(r.max));
  }
  for_each_layer(model, [&](const std::string& name, std::shared_ptr<LayerHooks>&, Var& weight) {
    const EncodedTensor e = encode_weight(config.weights, weight.value());
    H5Id g = h5_group(file, "quantized/" + name, true);
    h5_set_attr(g.get(), "format", config.weights.str());
    h5_write_array<int32_t>(g.get(), "integers", e.integers, weight.shape().dims());
    if (!e.exponents.empty()) {
      const AxisLayout l = weight_layout(weight.shape());
      const int64_t blocks = (l.axis + config.weights.block - 1) / config.weights.block;
      const int64_t dims[3] = {l.outer, blocks, l.inner};
      h5_write_array<int8_t>(g.get(), "exponents", e.exponents, dims);
    }
    if (!e.scales.empty())
      h5_write_tensor(g.get(), "scales", Tensor::from({static_cast<int64_t>(e.scales.size())}, e.scales));
  });
}

namespace {

// Int8 activation ranges, one group per layer under /quantization/ranges. Layer names hold dots
// ("layer1.0.conv1") and HDF5 splits only at slashes, so the walk is a plain depth-first search.
std::map<std::string, AffineRange> read_ranges(hid_t quantization) {
  std::map<std::string, AffineRange> ranges;
  if (!h5_exists(quantization, "ranges")) return ranges;
  // Links may make the tree a graph (a group linked into itself): the walk visits each group once
  // and stops at a bound on the groups a real model has.
  std::set<haddr_t> visited;  // HDF5 object addresses
  constexpr size_t kMaxGroups = 4096;
  std::function<void(hid_t, const std::string&, int)> walk = [&](hid_t g, const std::string& prefix, int depth) {
    if (depth > kMaxRangeDepth) return;
    for (const std::string& m : h5_members(g)) {
      H5Id child = h5_group(g, m, false);
      const std::string name = prefix.empty() ? m : prefix + "/" + m;
      H5O_info_t info;
      if (!child.valid() || H5Oget_info2(child.get(), &info, H5O_INFO_BASIC) < 0 || info.type != H5O_TYPE_GROUP)
        fail("quantization range '{}' is not a group", name);
      if (!visited.insert(info.addr).second) fail("quantization range '{}' links back to a group already read", name);
      if (visited.size() > kMaxGroups) fail("more than {} quantization range groups", kMaxGroups);
      if (auto lo = h5_attr_double(child.get(), "min")) {
        const std::optional<double> hi = h5_attr_double(child.get(), "max");
        if (!hi || !std::isfinite(*lo) || !std::isfinite(*hi) || *lo > *hi)
          fail("quantization range '{}' must have finite min <= max", name);
        ranges[name] = AffineRange{static_cast<float>(*lo), static_cast<float>(*hi)};
      } else {
        walk(child.get(), name, depth + 1);
      }
    }
  };
  H5Id g = h5_group(quantization, "ranges", false);
  walk(g.get(), "", 0);
  return ranges;
}

// The stored encoding of one layer's weight, decoded; the integers may be in the weight's shape or
// flat (toptag 0.1 wrote them flat, as int64).
Tensor read_encoded_weight(hid_t file, const std::string& path, const std::string& layer, const Format& format,
                           const Shape& shape) {
  const std::string g = "quantized/" + layer;
  if (!h5_exists(file, g)) fail("{}: quantized checkpoint lacks the encoding of layer '{}' (/{})", path, layer, g);
  std::vector<int64_t> dims;
  EncodedTensor e;
  e.integers = h5_read_array<int32_t>(file, g + "/integers", path, &dims);
  if (static_cast<int64_t>(e.integers.size()) != shape.numel())
    fail("{}: /{}/integers holds {} values, but the weight has shape {}", path, g, e.integers.size(), shape.str());
  if (format.kind == FormatKind::bfp) {
    const AxisLayout l = weight_layout(shape);
    e.exponents = h5_read_array<int8_t>(file, g + "/exponents", path);
    if (static_cast<int64_t>(e.exponents.size()) != l.outer * ((l.axis + format.block - 1) / format.block) * l.inner)
      fail("{}: /{}/exponents has {} values, which does not fit a weight of shape {}", path, g, e.exponents.size(),
           shape.str());
  }
  if (format.kind == FormatKind::int8) {
    const Tensor scales = h5_read_tensor(file, g + "/scales", path);
    if (scales.numel() != shape[0]) fail("{}: /{}/scales must hold {} values", path, g, shape[0]);
    e.scales.assign(scales.data(), scales.data() + scales.numel());
  }
  return decode_weight(format, e, shape);
}

}  // namespace

std::optional<QuantizationConfig> read_quantization(hid_t file, const std::string& path, ResNet& model) {
  if (!h5_exists(file, "quantization")) return std::nullopt;
  H5Id q = h5_group(file, "quantization", false);
  const std::optional<std::string> weights = h5_attr_string(q.get(), "weights");
  if (!weights) fail("{}: /quantization has no 'weights' format", path);
  QuantizationConfig c = make_quantization(*weights, h5_attr_string(q.get(), "activations").value_or(""),
                                           h5_attr_string(q.get(), "ste").value_or("masked"));
  c.ranges = read_ranges(q.get());
  for_each_layer(model, [&](const std::string& name, std::shared_ptr<LayerHooks>&, Var& weight) {
    const Tensor stored = read_encoded_weight(file, path, name, c.weights, weight.shape());
    Tensor expected = Tensor::empty(weight.shape());
    quantize_tensor(c.weights, true, weight.value(), expected, nullptr);
    for (int64_t i = 0; i < expected.numel(); ++i) {
      const float a = stored.data()[i], b = expected.data()[i];
      if (!(std::abs(a - b) <= kEncodingTolerance * std::max(std::abs(b), 1.0f)))
        fail("{}: layer '{}': the stored {} encoding gives {} at element {} where the master weight quantizes to {}",
             path, name, c.weights.str(), a, i, b);
    }
  });
  return c;
}

}  // namespace toptag
