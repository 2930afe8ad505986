#include "tagger/tagger.h"

#include "io/checkpoint.h"
#include "io/config_json.h"
#include "nn/blas.h"
#include "nn/check.h"
#include "nn/inference_plan.h"

namespace toptag {

std::string Tagger::describe() const {
  return quantization ? quantization->describe() : "float32";
}

std::string Tagger::describe_engine() const {
  if (model && model->frozen()) return "kernels " + model->frozen()->describe();
  if (quantization)
    return "float emulation of " + quantization->describe() + " (im2col + " + gemm_choice().reason +
           (emulate ? ", --emulate)" : ")");
  return "autograd ops (im2col + " + gemm_choice().reason + "; not frozen)";
}

std::optional<std::string> stored_training_config(hid_t file) {
  if (h5_exists(file, "training")) {
    H5Id g = h5_group(file, "training", false);
    if (std::optional<std::string> config = h5_attr_string(g.get(), "config")) return config;
  }
  return h5_attr_string(file, "training_config");
}

Tagger load_tagger(const std::string& path) {
  H5Id file = h5_open(path);
  Tagger t;
  t.model = load_model(file.get(), path);
  t.images.channels = static_cast<int>(t.model->config().in_channels);
  if (std::optional<std::string> config = stored_training_config(file.get())) {
    t.training_config = *config;
    fields_from_json(parse_json(*config, path), t.images, path);
    t.images_stored = true;
  } else if (std::optional<std::string> images = h5_attr_string(file.get(), kImageOptionsAttribute)) {
    fields_from_json(parse_json(*images, path), t.images, path);
    t.images_stored = true;
  }
  validate(t.images);
  check_channels(*t.model, t.images, path);
  if (std::optional<QuantizationConfig> q = read_quantization(file.get(), path, *t.model)) {
    t.quantization = std::make_shared<QuantizationConfig>(std::move(*q));
    attach_quantization(*t.model, t.quantization);
  }
  return t;
}

void write_tagger(hid_t file, const Tagger& tagger) {
  write_model_state(file, *tagger.model);
  if (tagger.quantization) write_quantization(file, *tagger.model, *tagger.quantization);
  if (!tagger.training_config.empty()) h5_set_attr(file, "training_config", tagger.training_config);
  // Weights toptag did not train: the images they were fed travel with them from now on.
  if (tagger.training_config.empty()) h5_set_attr(file, kImageOptionsAttribute, fields_to_json(tagger.images).dump());
}

void save_tagger(const std::string& path, const Tagger& tagger) {
  AtomicH5File out(path);
  write_tagger(out.id(), tagger);
  out.commit();
}

void check_channels(const ResNet& model, const ImageOptions& images, const std::string& source) {
  if (images.channels != model.config().in_channels)
    fail("{}: the model takes {}-channel images but the images have {} (--channels)", source,
         model.config().in_channels, images.channels);
}

int64_t quantize_tagger(Tagger& tagger, std::shared_ptr<QuantizationConfig> config, const BatchSourceFn& calibration) {
  ResNet& model = *tagger.model;
  if (!model.folded()) model.fold_batchnorm();
  int64_t seen = 0;
  if (config->activations && config->activations->kind == FormatKind::int8 && config->ranges.empty())
    seen = calibrate(model, *config, calibration);
  attach_quantization(model, config);
  tagger.quantization = std::move(config);
  return seen;
}

void prepare_for_inference(Tagger& tagger) {
  tagger.model->set_training(false);
  if (!tagger.model->folded()) tagger.model->fold_batchnorm();
  if (tagger.quantization) freeze_for_inference(*tagger.model, *tagger.quantization);
}

void freeze_for_inference(Tagger& tagger) {
  if (tagger.quantization && tagger.emulate) return prepare_for_inference(tagger);
  // The frozen plan holds its own copy of the quantized weights: the layers' hooks keep quantizing on
  // each forward pass, as they would for training, and run only if the plan is dropped.
  tagger.model->set_training(false);
  if (!tagger.model->folded()) tagger.model->fold_batchnorm();
  if (!tagger.quantization) {
    tagger.model->freeze();  // weights packed for this CPU (nn/inference_plan.h)
    return;
  }
  const LayerQuantizations layers = plan_layers(*tagger.model, *tagger.quantization);
  tagger.model->freeze(active_isa(), true, &layers);
}

}  // namespace toptag
