// The training workflow (toptag train): the paper's recipe by default, ResNet-50 + fc1(1024, ReLU)
// + fc2(2), softmax cross-entropy, Adam lr 1e-3, minibatch 64, 10 epochs.
//
// Output directory:
//   last.h5       model + optimizer + progress after each epoch (and on interrupt)
//   best.h5       the epoch with the best validation AUC
//   metrics.csv   one row per epoch (and metrics.json, the same rows)
// Every checkpoint stores the run's full configuration (group /training, attribute "config", JSON),
// so `--resume` needs nothing but the directory.
#pragma once

#include <atomic>
#include <optional>
#include <string>

#include "data/jet_image.h"
#include "training/adam.h"
#include "training/schedule.h"

namespace toptag {

struct TrainConfig {
  std::string train_path, val_path, output_dir;
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
  int threads = 0;
  // Quantization-aware training: weights (and optionally layer inputs) fake-quantized in the forward
  // pass, batch norms folded; "" = float. A quantized --init checkpoint brings its own formats.
  std::string quantize, quantize_activations, ste = "masked";
  int64_t calibration_batches = 8;  // int8 activations: batches used to calibrate the input ranges

  std::string to_json() const;
  static TrainConfig from_json(const std::string& json, const std::string& source);
};

// Where a run stands; stored in every checkpoint.
struct TrainState {
  int64_t epoch = 0;          // the epoch in progress (0-based); == epochs when finished
  int64_t step_in_epoch = 0;  // batches of `epoch` already trained
  int64_t global_step = 0;
  double best_auc = -1;
  int64_t best_epoch = -1;
};

struct TrainResult {
  TrainState state;
  bool interrupted = false;
  std::string last_checkpoint, best_checkpoint;
  double val_auc = 0, val_accuracy = 0, val_rejection_30 = 0;
};

// Runs (or, with `resume_from` a checkpoint path, continues) a training run. Returns early with
// interrupted = true, after writing last.h5, when *stop becomes true.
TrainResult train(const TrainConfig& config, const std::atomic<bool>* stop, const std::string& resume_from = "");

// The checkpoint to resume from: DIR/last.h5 for a directory, or the file itself.
std::string resume_checkpoint_path(const std::string& dir_or_file);
// The configuration stored in a training checkpoint.
TrainConfig read_train_config(const std::string& checkpoint);
// The JSON text of the configuration a checkpoint's weights were trained with: /training's "config",
// or the root attribute "training_config" that toptag quantize copies over. nullopt when unknown.
std::optional<std::string> checkpoint_training_config(const std::string& checkpoint);
// The image options of that configuration: what the model expects to be fed.
std::optional<ImageOptions> checkpoint_image_options(const std::string& checkpoint);

}  // namespace toptag
