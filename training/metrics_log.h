// A run's per-epoch metrics, kept in memory and written whole after every epoch to
//   DIR/metrics.csv   epoch,step,lr,train_loss,val_loss,val_accuracy,val_auc,val_rejection_30,seconds
//   DIR/metrics.json  {"run": {the run's configuration}, "epochs": [{"epoch": 1, "step": ..., ...}, ...]}
// both atomically, from the rows, never by reading one file back into the other. A resumed run
// starts from metrics.json's rows, which must be its own: a log it cannot trust is refused.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "training/config.h"

namespace toptag {

struct EpochMetrics {
  int64_t epoch = 0;  // 1-based
  int64_t step = 0;   // optimizer steps so far
  double lr = 0, train_loss = 0, val_loss = 0, val_accuracy = 0, val_auc = 0, val_rejection_30 = 0, seconds = 0;
};

class MetricsLog {
 public:
  // The log of the run `run` (its final configuration, as its checkpoints store it), in run.output_dir.
  explicit MetricsLog(const TrainConfig& run);

  // Reads DIR/metrics.json (missing: no rows). Throws, naming the file and the row or field, unless
  // it is this run's log of some of epochs 1..finished_epochs: not JSON, a field missing, of the
  // wrong type or out of range, an epoch repeated or not yet finished by the checkpoint, or written
  // by a run of another configuration (only `epochs` and `output_dir` may differ). A log from
  // before the configuration was stored is taken as the run's own.
  void load(int64_t finished_epochs);
  // Adds (or replaces) the row of m.epoch, drops any later rows, and rewrites both files.
  void record(const EpochMetrics& m);
  const std::vector<EpochMetrics>& rows() const { return rows_; }

 private:
  void write() const;

  TrainConfig run_;
  std::vector<EpochMetrics> rows_;
};

}  // namespace toptag
