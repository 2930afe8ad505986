// A tagger: the network, the images it is fed, and, for a quantized model, how it is quantized.
// This is the one place a model is loaded for inference (predict, features, serve, perf) and for
// training (--init, --resume), from any checkpoint toptag writes:
//   - a float checkpoint (io/checkpoint.h), optionally with batch norms folded;
//   - a quantized one (quantize/model.h: /quantization and /quantized);
//   - a training checkpoint (training/checkpoint.h adds /optimizer and /training).
// The image options come from the configuration of the run that trained the weights: /training's
// attribute "config", or the root attribute "training_config" that quantized checkpoints carry, or,
// for weights toptag did not train, the root attribute "image_options" that quantize and export
// store. A checkpoint with none of them (weights exported from PyTorch) stores no image options:
// the command's image flags say what it is fed (images_stored is false).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "data/jet_image.h"
#include "io/h5.h"
#include "nn/resnet.h"
#include "quantize/model.h"

namespace toptag {

// The root attribute holding a checkpoint's image options (JSON) when it has no training configuration.
constexpr const char* kImageOptionsAttribute = "image_options";

struct Tagger {
  std::unique_ptr<ResNet> model;
  ImageOptions images;         // what the model expects to be fed
  bool images_stored = false;  // `images` come from the checkpoint; else defaults (channels: the model's)
  std::shared_ptr<QuantizationConfig> quantization;  // null for a float model
  std::string training_config;                       // JSON of the run that trained the weights ("" if unknown)
  // A quantized model runs the float emulation (the layers' quantizers on the autograd path) instead
  // of the frozen plan's kernels: --emulate, for comparison.
  bool emulate = false;

  bool quantized() const { return quantization != nullptr; }
  std::string describe() const;  // "float32" or the quantization
  // Which code computes it: "kernels avx512 f32 12x32 (...), 53 convolutions ... packed (...)" once
  // frozen, "float emulation of <format> (im2col + <who runs the GEMMs>)" for a quantized model, else
  // "autograd ops (im2col + <who runs the GEMMs>; not frozen)" (nn/blas.h gemm_choice).
  std::string describe_engine() const;
};

// Loads any toptag checkpoint (float, folded, quantized, training). Errors name the file.
Tagger load_tagger(const std::string& path);

// Writes the model, its quantization and its training configuration into an open file.
void write_tagger(hid_t file, const Tagger& tagger);
// Atomically writes a checkpoint holding the tagger alone.
void save_tagger(const std::string& path, const Tagger& tagger);

// The configuration (JSON) `file` records for the run that trained its weights, if any.
std::optional<std::string> stored_training_config(hid_t file);

// The one channel check: throws, naming `source`, unless the model takes images of `images.channels`.
void check_channels(const ResNet& model, const ImageOptions& images, const std::string& source);

// The quantization set-up shared by toptag quantize and train --quantize: folds the batch norms,
// calibrates int8 activation ranges on `calibration` when the format needs them and `config` has
// none, and attaches the quantizers. Returns the number of images calibrated on (0 if none).
int64_t quantize_tagger(Tagger& tagger, std::shared_ptr<QuantizationConfig> config, const BatchSourceFn& calibration);

// Inference only: eval mode with every batch norm folded into its conv (the same function, one pass
// less per layer, and the ReLU fused into the conv), and a quantized tagger's weights quantized once
// (quantize/model.h). What the exporter needs: the weights the model computes with.
void prepare_for_inference(Tagger& tagger);
// Eval mode, batch norms folded, and the model frozen: its weights packed once for this CPU's kernels
// (nn/inference_plan.h), a quantized model's layers on integer kernels where they can be. The plan
// holds the quantized weights, so a quantized model's hooks are not frozen as well. A quantized tagger
// with `emulate` set gets prepare_for_inference instead: the float emulation. What predict, features,
// serve and perf run.
void freeze_for_inference(Tagger& tagger);

}  // namespace toptag
