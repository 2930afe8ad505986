// Quantizing a whole network: batch norms folded into the convs (w' = w gamma / sqrt(var + eps),
// b' = beta - mean gamma / sqrt(var + eps)), then every conv and linear layer computes with
// fake-quantized weights (and, optionally, fake-quantized inputs) on every forward pass. Master
// weights stay float32, so the same model is used for post-training quantization, quantization-aware
// fine-tuning, prediction and serving, and all of them compute exactly the same scores.
//
// In a checkpoint (beside the model's float32 master weights, folded):
//   /quantization          attributes "weights" and "activations" (format specs, "" = none), "ste"
//   /quantization/ranges   int8 activations: per layer, attributes "min" and "max" of its input
//   /quantized/<layer>     the weight's exact encoding: "integers" (int32, the weight's shape:
//                          fixed-point integers, BFP signed mantissas or int8 values), "exponents"
//                          (int8, BFP: [outer, blocks, inner]) or "scales" (float32, int8: one per
//                          output channel); attribute "format".
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "io/h5.h"
#include "nn/inference_plan.h"
#include "nn/ops/fake_quant.h"
#include "nn/resnet.h"
#include "quantize/format.h"

namespace toptag {

struct QuantizationConfig {
  Format weights;
  std::optional<Format> activations;
  SteMode ste = SteMode::masked;
  std::map<std::string, AffineRange> ranges;  // int8 activations: input range of each layer

  std::string describe() const;  // "weights ms-fp8, activations float32, masked STE"
};

// The formats named on a command line: `activations` "" for float inputs. Throws for an unknown name.
QuantizationConfig make_quantization(const std::string& weights, const std::string& activations,
                                     const std::string& ste);

// The one table of straight-through estimator names: "masked", "identity".
SteMode parse_ste(const std::string& name);
const char* ste_name(SteMode mode);

// Folds the batch norms (if not done yet) and attaches fake quantizers to every conv and linear.
void attach_quantization(ResNet& model, std::shared_ptr<QuantizationConfig> config);

// Batches of images for calibration, until nullopt.
using BatchSourceFn = std::function<std::optional<Tensor>()>;

// Runs the batches through the model (eval mode, no tape) and records each conv/linear input's min
// and max into config.ranges (int8 activations need them). Returns the images seen.
int64_t calibrate(ResNet& model, QuantizationConfig& config, const BatchSourceFn& next_batch);

// For inference only: quantizes every weight once and lets the layers use those values instead of
// re-quantizing the float weights on each forward pass. The scores are exactly the same; a small
// batch (a served request) no longer pays for quantizing 25M weights. Training must not follow.
void freeze_for_inference(ResNet& model, const QuantizationConfig& config);

// The quantized model as the frozen inference plan runs it (nn/inference_plan.h): every layer's
// quantized weight, its input quantizer, and, where weights and inputs are both block floating point,
// the weight's exact encoding for the integer kernels. Then model.freeze(isa, winograd, &layers).
LayerQuantizations plan_layers(ResNet& model, const QuantizationConfig& config);

// Writes /quantization and /quantized into an open checkpoint that already holds the model.
void write_quantization(hid_t file, ResNet& model, const QuantizationConfig& config);
// Reads /quantization (nullopt when the file has none) and checks every layer's stored encoding
// against the model's master weights: a mismatch (a damaged or edited file) is an error naming the layer.
std::optional<QuantizationConfig> read_quantization(hid_t file, const std::string& path, ResNet& model);

}  // namespace toptag
