// Training checkpoints: a tagger checkpoint (tagger/tagger.h: model, quantization) plus
//   /optimizer   Adam's moments "m/<name>", "v/<name>" and attribute "step"
//   /training    attributes "epoch", "step_in_epoch", "global_step", "best_auc", "best_epoch", the
//                epoch in progress's "epoch_loss_sum", "epoch_loss_steps", "epoch_seconds" (absent
//                from checkpoints written before them), and "config", the run's configuration as
//                JSON (training/config.h)
// so `--resume` needs nothing but the file. Written atomically (io/h5.h AtomicH5File).
#pragma once

#include <string>

#include "tagger/tagger.h"
#include "training/adam.h"
#include "training/config.h"

namespace toptag {

// Where a run stands; stored in every checkpoint.
struct TrainState {
  int64_t epoch = 0;          // the epoch in progress (0-based); == epochs when finished
  int64_t step_in_epoch = 0;  // batches of `epoch` already trained
  int64_t global_step = 0;
  double best_auc = -1;
  int64_t best_epoch = -1;
  // The epoch in progress so far, so that an epoch resumed after an interrupt logs what it would
  // have logged uninterrupted: the sum of the mean losses of its first `epoch_loss_steps` steps
  // (all step_in_epoch of them, unless the checkpoint predates these sums) and its seconds.
  double epoch_loss_sum = 0;
  int64_t epoch_loss_steps = 0;
  double epoch_seconds = 0;

  // Moves to the start of the next epoch.
  void next_epoch();
};

void write_training_checkpoint(const std::string& path, const Tagger& tagger, const Adam& adam, const TrainState& state,
                               const TrainConfig& config);
// Throws naming the file and attribute if a value is damaged (a negative count, NaN seconds).
TrainState read_train_state(const std::string& checkpoint);
// The configuration stored in a training checkpoint.
TrainConfig read_train_config(const std::string& checkpoint);
// Adam's moments and step count from a training checkpoint.
void read_optimizer(const std::string& checkpoint, Adam& adam);

// The checkpoint to resume from: DIR/last.h5 for a directory, or the file itself.
std::string resume_checkpoint_path(const std::string& dir_or_file);

}  // namespace toptag
