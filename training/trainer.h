// The training workflow (toptag train). Output directory:
//   last.h5       model + optimizer + progress after each epoch (and on interrupt)
//   best.h5       the epoch with the best validation AUC
//   metrics.csv   one row per epoch (and metrics.json, the same rows: training/metrics_log.h)
// Every checkpoint stores the run's full configuration (training/checkpoint.h), so `--resume`
// needs nothing but the directory.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "training/checkpoint.h"
#include "training/config.h"

namespace toptag {

// The files a run writes into its output directory (checkpoints, then the metrics log).
inline const std::vector<std::string> kRunFiles = {"last.h5", "best.h5", "metrics.csv", "metrics.json"};

struct TrainResult {
  TrainState state;
  bool interrupted = false;
  std::string last_checkpoint, best_checkpoint;
  double val_auc = 0, val_accuracy = 0, val_rejection_30 = 0;
};

// Runs a training run. Returns early with interrupted = true, after writing last.h5, when *stop
// becomes true.
TrainResult train(const TrainConfig& config, const std::atomic<bool>* stop);

// Continues the run whose checkpoint is `checkpoint` (training/checkpoint.h), writing into
// `output_dir` (the directory the user named, not the one recorded in the checkpoint). Only the
// number of epochs may change: `epochs` > 0 replaces the stored one.
TrainResult resume(const std::string& checkpoint, const std::string& output_dir, int64_t epochs,
                   const std::atomic<bool>* stop);

}  // namespace toptag
