// Quantizing a whole tagger: batch norms folded into the convs (w' = w gamma / sqrt(var + eps),
// b' = beta - mean gamma / sqrt(var + eps)), then every conv and linear layer computes with
// fake-quantized weights (and, optionally, fake-quantized inputs) on every forward pass. Master
// weights stay float32, so the same model is used for post-training quantization, quantization-aware
// fine-tuning, prediction and serving, and all of them compute exactly the same scores.
//
// A quantized checkpoint is a model checkpoint (float32 master weights at the root, folded) plus:
//   /quantization          attributes "weights" and "activations" (format specs, "" = none), "ste"
//   /quantization/ranges   int8 activations: per layer, attributes "min" and "max" of its input
//   /quantized/<layer>     the weight's exact encoding: "integers" (int32: fixed-point integers, BFP
//                          signed mantissas or int8 values, same shape as the weight), "exponents" (int8,
//                          BFP: [outer, blocks, inner]) or "scales" (float32, int8: per output channel);
//                          attribute "format".
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "nn/h5.h"
#include "nn/ops/fake_quant.h"
#include "nn/resnet.h"
#include "quantize/format.h"

namespace toptag {

struct QuantizationConfig {
  Format weights;
  std::optional<Format> activations;
  SteMode ste = SteMode::masked;
  std::map<std::string, AffineRange> ranges;  // int8 activations: input range of each layer

  std::string describe() const;  // "weights ms-fp8, activations none"
};

// A model and, if it is quantized, how.
struct Tagger {
  std::unique_ptr<ResNet> model;
  std::shared_ptr<QuantizationConfig> quantization;  // null for a float model
  bool quantized() const { return quantization != nullptr; }
};

// Folds the batch norms (if not done yet) and attaches fake quantizers to every conv and linear.
void attach_quantization(ResNet& model, std::shared_ptr<QuantizationConfig> config);

// Runs `next_batch` images through the model (eval mode, no tape) and records each conv/linear
// input's min and max into config.ranges (int8 activations need them). Returns the images seen.
int64_t calibrate(ResNet& model, QuantizationConfig& config, const std::function<std::optional<Tensor>()>& next_batch);

// Writes /quantization and /quantized into an open checkpoint that already holds the model.
void write_quantization(hid_t file, ResNet& model, const QuantizationConfig& config);
std::optional<QuantizationConfig> read_quantization(hid_t file, const std::string& path);

// For inference only: quantizes every weight once and lets the layers use those values instead of
// re-quantizing the float weights on each forward pass. The scores are exactly the same; a small
// batch (a served request) no longer pays for quantizing 25M weights. Training must not follow.
void freeze_for_inference(Tagger& tagger);

// Loads any toptag checkpoint (float, folded or quantized) ready for inference or training.
Tagger load_tagger(const std::string& path);
// Saves model (+ quantization) atomically.
// A non-empty `training_config` (JSON) is kept as the root attribute "training_config", so the
// image options the weights were trained with travel with them.
void save_tagger(const std::string& path, Tagger& tagger, const std::string& training_config = "");

// SteMode from "masked" / "identity".
SteMode parse_ste(const std::string& name);

}  // namespace toptag
