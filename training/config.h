// The configuration of a training run (toptag train): the paper's recipe by default, ResNet-50 +
// fc1(1024, ReLU) + fc2(2), softmax cross-entropy, Adam lr 1e-3, minibatch 64, 10 epochs.
// Every checkpoint stores it as JSON (training/checkpoint.h), written and read through the one
// table of keys below, so `--resume` gets back every setting.
#pragma once

#include <concepts>
#include <cstdint>
#include <string>

#include "data/jet_image.h"
#include "training/schedule.h"

namespace toptag {

struct TrainConfig {
  std::string train_path, val_path, output_dir;
  std::string key;            // the pandas key in the jet files, where one holds several ("": found)
  std::string features_path;  // train only the head on featurizer outputs (toptag features)
  std::string init_path;      // start from this checkpoint's weights
  std::string arch = "resnet50";
  int64_t width = 64, hidden = 1024;
  ImageOptions images;
  int64_t epochs = 10, batch_size = 64, eval_batch_size = 256;
  double lr = 1e-3, weight_decay = 0.0;
  ScheduleOptions schedule;
  uint64_t seed = 1;
  int64_t max_train_jets = 0, max_val_jets = 0;
  bool freeze_backbone = false;
  bool sync_batchnorm = false;  // data-parallel runs: batch-norm statistics over every rank's batch
  double bucket_mb = 25;        // data-parallel runs: gradients reduced in buckets of this size
  int threads = 0;
  // Quantization-aware training: weights (and optionally layer inputs) fake-quantized in the forward
  // pass, batch norms folded; "" = float. A quantized --init checkpoint brings its own formats.
  std::string quantize, quantize_activations, ste = "masked";
  int64_t calibration_batches = 8;  // int8 activations: batches used to calibrate the input ranges

  bool head_only() const { return freeze_backbone || !features_path.empty(); }
  std::string to_json() const;
  // Keys missing from `json` (an older toptag) keep their defaults; errors name `source`.
  static TrainConfig from_json(const std::string& json, const std::string& source);
};

// The one table of stored keys: f(key, member) for each. C is TrainConfig, const or not.
template <class C, class F>
requires std::same_as<std::remove_const_t<C>, TrainConfig>
void for_each_field(C& c, F&& f) {
  f("train", c.train_path);
  f("val", c.val_path);
  f("key", c.key);
  f("output_dir", c.output_dir);
  f("features", c.features_path);
  f("init", c.init_path);
  f("arch", c.arch);
  f("width", c.width);
  f("hidden", c.hidden);
  for_each_field(c.images, f);  // image_size, channels, extent, center, rotate, flip, normalize
  f("epochs", c.epochs);
  f("batch_size", c.batch_size);
  f("eval_batch_size", c.eval_batch_size);
  f("lr", c.lr);
  f("weight_decay", c.weight_decay);
  f("schedule", c.schedule.kind);
  f("warmup_steps", c.schedule.warmup_steps);
  f("step_epochs", c.schedule.step_epochs);
  f("gamma", c.schedule.gamma);
  f("seed", c.seed);
  f("max_train_jets", c.max_train_jets);
  f("max_val_jets", c.max_val_jets);
  f("freeze_backbone", c.freeze_backbone);
  f("sync_batchnorm", c.sync_batchnorm);
  f("bucket_mb", c.bucket_mb);
  f("threads", c.threads);
  f("quantize", c.quantize);
  f("quantize_activations", c.quantize_activations);
  f("ste", c.ste);
  f("calibration_batches", c.calibration_batches);
}

// Checks every setting, before anything is built or read: throws naming the flag.
void validate(const TrainConfig& config);

}  // namespace toptag
