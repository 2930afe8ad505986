// A run's per-epoch metrics, kept in memory and written whole after every epoch to
//   DIR/metrics.csv   epoch,step,lr,train_loss,val_loss,val_accuracy,val_auc,val_rejection_30,seconds
//   DIR/metrics.json  {"epochs": [{"epoch": 1, "step": ..., ...}, ...]}  (the same rows)
// both atomically, from the rows, never by reading one file back into the other. A resumed run
// starts from metrics.json's rows of the epochs its checkpoint has finished.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace toptag {

struct EpochMetrics {
  int64_t epoch = 0;  // 1-based
  int64_t step = 0;   // optimizer steps so far
  double lr = 0, train_loss = 0, val_loss = 0, val_accuracy = 0, val_auc = 0, val_rejection_30 = 0, seconds = 0;
};

class MetricsLog {
 public:
  explicit MetricsLog(std::string dir) : dir_(std::move(dir)) {}

  // Reads DIR/metrics.json, keeping the rows of epochs 1..finished_epochs (later or repeated rows,
  // from a run stopped between its metrics and its checkpoint, are dropped). Missing file: no rows.
  void load(int64_t finished_epochs);
  // Adds (or replaces) the row of m.epoch and rewrites both files.
  void record(const EpochMetrics& m);
  const std::vector<EpochMetrics>& rows() const { return rows_; }

 private:
  void write() const;

  std::string dir_;
  std::vector<EpochMetrics> rows_;
};

}  // namespace toptag
