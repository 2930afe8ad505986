#include "training/config.h"

#include <fmt/ranges.h>

#include <cmath>

#include "io/config_json.h"
#include "nn/resnet.h"
#include "quantize/model.h"

namespace toptag {

std::string TrainConfig::to_json() const {
  return fields_to_json(*this).dump(2);
}

TrainConfig TrainConfig::from_json(const std::string& text, const std::string& source) {
  TrainConfig c;
  fields_from_json(parse_json(text, source), c, source);
  return c;
}

void validate(const TrainConfig& c) {
  if (c.epochs < 1) fail("--epochs must be at least 1, got {}", c.epochs);
  if (c.batch_size < 2) fail("--batch-size must be at least 2 (batch normalisation needs it), got {}", c.batch_size);
  if (c.eval_batch_size < 1) fail("--eval-batch-size must be at least 1, got {}", c.eval_batch_size);
  if (!(c.lr > 0) || !std::isfinite(c.lr)) fail("--lr must be a positive number, got {}", c.lr);
  if (!(c.weight_decay >= 0) || !std::isfinite(c.weight_decay))
    fail("--weight-decay must be a number >= 0, got {}", c.weight_decay);
  if (c.lr * c.weight_decay >= 1)  // AdamW multiplies the weights by 1 - lr * wd every step
    fail("--lr {} times --weight-decay {} is {:g}: the decay would flip or zero the weights every step (keep it << 1)",
         c.lr, c.weight_decay, c.lr * c.weight_decay);
  if (c.width > 1024 || c.hidden > 65536) fail("--width is at most 1024 and --hidden at most 65536");
  if (c.max_train_jets < 0 || c.max_val_jets < 0) fail("--max-train-jets and --max-val-jets must be >= 0");
  if (c.calibration_batches < 1) fail("--calibration-batches must be at least 1, got {}", c.calibration_batches);
  if (!find_arch(c.arch)) fail("unknown --arch '{}' (known: {})", c.arch, fmt::join(known_archs(), ", "));
  if (c.width < 1 || c.hidden < 1) fail("--width and --hidden must be at least 1");
  if (c.output_dir.empty()) fail("--output-dir is required");
  if (c.features_path.empty() && c.train_path.empty()) fail("--train (or --features) is required");
  if (c.val_path.empty()) fail("--val is required");
  if (!c.features_path.empty() && c.init_path.empty())
    fail("--features trains only the head: --init must name the checkpoint whose featurizer made the features");
  if (!c.quantize.empty()) make_quantization(c.quantize, c.quantize_activations, c.ste);  // throws for bad names
  if (c.quantize.empty() && !c.quantize_activations.empty())
    fail("--quantize-activations needs --quantize (the weight format)");
  validate(c.schedule);
  validate(c.images);
}

}  // namespace toptag
