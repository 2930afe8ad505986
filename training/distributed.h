// Data-parallel training over MPI: the gradient reduction and the gathering of inference results,
// on the World of cluster/world.h.
//
// The semantics (README, "Distributed training"): --batch-size is the global batch, split evenly over
// the ranks; every rank draws the same shuffled order and computes its own slice of each global
// batch; the gradients are averaged over the ranks before every Adam step, so every rank takes the
// same step and the weights never drift apart (checked every epoch).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "cluster/world.h"
#include "nn/layers.h"
#include "tagger/inference.h"

namespace toptag {

// Every rank's share of an inference (InferenceOptions part = rank, parts = size), gathered on every
// rank in rank order, which is file order: predictions, the mean loss over all of them, the skipped jets.
InferenceResult gather(const InferenceResult& mine, const World& world);
// Jets skipped for NaN/inf on every rank: their count, and the first one's row.
NonFiniteReport gather(const NonFiniteReport& mine, const World& world);

// Averages the gradients of the trainable parameters over the ranks while the backward pass runs.
// The parameters are grouped, in the order backward produces them (the reverse of the model's), into
// buckets of about `bucket_bytes`; a bucket's sum starts (non-blocking) as soon as backward has
// finished all its gradients, so the reduction of the last layers overlaps the backward pass of the
// first. Buckets start strictly in order, the same on every rank.
// The result on every rank: the gradient of the global batch's mean loss, that is each rank's
// mean-loss gradient times its row count, summed over the ranks, divided by the global row count.
class GradientReducer {
 public:
  GradientReducer(const StateList& trainable, World& world, int64_t bucket_bytes);

  // Before a backward pass whose batch has `local_rows` rows on this rank.
  void start(int64_t local_rows);
  // The backward hook (nn/autograd.h ParameterReadyFn): `slot`'s gradient is final.
  void ready(const GradSlot& slot);
  // After the backward pass: starts what is left (parameters without a gradient this step reduce
  // zeros), waits for every bucket and writes the averaged gradients back. Returns the seconds
  // spent waiting here, the reduction time the backward pass did not hide.
  double finish(int64_t global_rows);

  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }
  // Seconds spent inside the backward hook (packing buckets, starting and progressing their sums),
  // since construction.
  double hook_seconds() const { return hook_seconds_; }

 private:
  struct Bucket {
    std::vector<size_t> parameters;  // indices into trainable.parameters
    std::vector<float> values;       // the packed gradients, times the local row count
    size_t waiting = 0;              // gradients not yet final this step
  };
  void launch_ready_buckets();

  const StateList& trainable_;
  World& world_;
  std::vector<Bucket> buckets_;
  std::vector<std::pair<const GradSlot*, size_t>> bucket_of_;  // parameter slot -> bucket, sorted
  size_t launched_ = 0;                                        // buckets started this step, always a prefix
  float local_rows_ = 1;
  double hook_seconds_ = 0;
};

}  // namespace toptag
