#include "quantize/model.h"

#include <fmt/format.h>

#include <limits>

#include "nn/check.h"
#include "nn/checkpoint.h"

namespace toptag {

std::string QuantizationConfig::describe() const {
  return fmt::format("weights {}, activations {}, {} STE", weights.str(), activations ? activations->str() : "float32",
                     ste == SteMode::masked ? "masked" : "identity");
}

SteMode parse_ste(const std::string& name) {
  if (name == "masked") return SteMode::masked;
  if (name == "identity") return SteMode::identity;
  fail("unknown straight-through estimator '{}' (masked, identity)", name);
}

namespace {

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

void freeze_for_inference(Tagger& tagger) {
  if (!tagger.quantization) return;
  const Format weights = tagger.quantization->weights;
  for_each_layer(*tagger.model, [&](const std::string&, std::shared_ptr<LayerHooks>& hooks, Var& weight) {
    Tensor q = Tensor::empty(weight.shape());
    quantize_tensor(weights, true, weight.value(), q, nullptr);  // what the weight hook computes each time
    auto frozen = std::make_shared<LayerHooks>(*hooks);
    frozen->weight = [q](const Var&) { return Var(q); };
    hooks = frozen;
  });
}

int64_t calibrate(ResNet& model, QuantizationConfig& config, const std::function<std::optional<Tensor>()>& next_batch) {
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
  h5_set_attr(q.get(), "ste", std::string(config.ste == SteMode::masked ? "masked" : "identity"));
  for (const auto& [name, r] : config.ranges) {
    H5Id g = h5_group(q.get(), "ranges/" + name, true);
    h5_set_attr(g.get(), "min", static_cast<double>(r.min));
    h5_set_attr(g.get(), "max", static_cast<double>(r.max));
  }
  for_each_layer(model, [&](const std::string& name, std::shared_ptr<LayerHooks>&, Var& weight) {
    const EncodedTensor e = encode_weight(config.weights, weight.value());
    H5Id g = h5_group(file, "quantized/" + name, true);
    h5_set_attr(g.get(), "format", config.weights.str());
    std::vector<int64_t> dims(weight.shape().dims().begin(), weight.shape().dims().end());
    std::vector<int64_t> ints(e.integers.begin(), e.integers.end());
    h5_write_int64(g.get(), "integers", ints);  // flat; the weight's shape is the root tensor's
    if (!e.exponents.empty())
      h5_write_int64(g.get(), "exponents", std::vector<int64_t>(e.exponents.begin(), e.exponents.end()));
    if (!e.scales.empty())
      h5_write_tensor(g.get(), "scales", Tensor::from({static_cast<int64_t>(e.scales.size())}, e.scales));
  });
}

std::optional<QuantizationConfig> read_quantization(hid_t file, const std::string& path) {
  if (!h5_exists(file, "quantization")) return std::nullopt;
  H5Id q = h5_group(file, "quantization", false);
  QuantizationConfig c;
  const std::optional<std::string> weights = h5_attr_string(q.get(), "weights");
  if (!weights) fail("{}: /quantization has no 'weights' format", path);
  c.weights = Format::parse(*weights);
  const std::string activations = h5_attr_string(q.get(), "activations").value_or("");
  if (!activations.empty()) c.activations = Format::parse(activations);
  c.ste = parse_ste(h5_attr_string(q.get(), "ste").value_or("masked"));
  if (h5_exists(q.get(), "ranges")) {
    H5Id ranges = h5_group(q.get(), "ranges", false);
    // Layer names contain dots but no slashes except the block path: walk two levels deep.
    std::function<void(hid_t, const std::string&)> walk = [&](hid_t g, const std::string& prefix) {
      for (const std::string& m : h5_members(g)) {
        H5Id child = h5_group(g, m, false);
        const std::string name = prefix.empty() ? m : prefix + "/" + m;
        if (auto lo = h5_attr_double(child.get(), "min")) {
          c.ranges[name] =
              AffineRange{static_cast<float>(*lo), static_cast<float>(h5_attr_double(child.get(), "max").value_or(0))};
        } else {
          walk(child.get(), name);
        }
      }
    };
    walk(ranges.get(), "");
  }
  return c;
}

Tagger load_tagger(const std::string& path) {
  Tagger t;
  t.model = load_model(path);
  H5Id f = h5_open(path);
  if (std::optional<QuantizationConfig> q = read_quantization(f.get(), path)) {
    t.quantization = std::make_shared<QuantizationConfig>(*q);
    attach_quantization(*t.model, t.quantization);
  }
  return t;
}

void save_tagger(const std::string& path, Tagger& tagger, const std::string& training_config) {
  AtomicH5File out(path);
  if (!training_config.empty()) h5_set_attr(out.id(), "training_config", training_config);
  write_model_state(out.id(), *tagger.model);
  if (tagger.quantization) write_quantization(out.id(), *tagger.model, *tagger.quantization);
  out.commit();
}

}  // namespace toptag
