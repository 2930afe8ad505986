// Shuffled minibatches streamed from a JetFile with bounded memory.
//
// Order: the rows [0, n) are cut into blocks of kBlockRows; the blocks are shuffled, grouped into
// windows of about `window_bytes`, each window is read (contiguous reads, so compressed chunks are
// decoded once) and shuffled row by row, and batches are cut from the resulting stream. The order
// depends only on (seed, epoch): same seed, same order, whatever the thread count.
// A background thread reads and makes the next batches' images while the model computes.
#pragma once

#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "data/dataset.h"

namespace toptag {

struct LoaderOptions {
  int64_t batch_size = 64;
  bool shuffle = true;
  uint64_t seed = 0;
  int64_t max_jets = 0;                       // 0: all rows of the file
  int64_t first_row = 0;                      // start here: rows [first_row, max_jets or the end)
  bool drop_last = false;                     // drop a final partial batch
  int prefetch = 4;                           // batches prepared ahead
  int64_t window_bytes = int64_t{128} << 20;  // raw rows held at once for shuffling
  // Data-parallel training: every rank draws the same batches and makes only its own slice of each,
  // rows [B*part/parts, B*(part+1)/parts) of a batch of B (labels and rows too).
  int part = 0, parts = 1;
};

// The rows [begin, end) of part `part` of `parts` of n rows cut into batches of `batch`: whole
// batches [nb*part/parts, nb*(part+1)/parts) of the nb = ceil(n/batch). With batch 1, the rows
// [n*part/parts, n*(part+1)/parts): the parts differ in size by at most one.
std::pair<int64_t, int64_t> part_rows(int64_t n, int part, int parts, int64_t batch = 1);

struct Batch {
  Tensor images;                // (B, C, H, W)
  std::vector<int64_t> labels;  // B
  std::vector<int64_t> rows;    // B, the file rows
  int64_t whole_rows = 0;       // the rows of the whole batch this one is a part of (B without parts)
};

class Loader {
 public:
  static constexpr int64_t kBlockRows = 512;

  Loader(const JetFile& file, const ImageOptions& images, const LoaderOptions& options);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // Starts streaming epoch `epoch` (0-based), skipping its first `skip_batches` batches (resume).
  void start_epoch(int64_t epoch, int64_t skip_batches = 0);
  // The next batch of the epoch, or nothing at its end. Rethrows a read error from the background thread.
  std::optional<Batch> next();

  int64_t rows() const { return end_ - begin_; }
  // Batches in an epoch if no row is dropped for NaN/inf.
  int64_t batches_per_epoch() const;
  // Rows dropped for NaN/inf so far (cumulative over epochs).
  NonFiniteReport dropped() const;

 private:
  void stop();
  void produce(int64_t epoch, int64_t skip_batches);
  std::vector<std::vector<int64_t>> epoch_windows(int64_t epoch) const;  // block starts per window
  bool push(std::optional<Batch> batch);

  const JetFile& file_;
  ImageOptions images_;
  LoaderOptions options_;
  int64_t begin_ = 0, end_ = 0;  // the rows read

  std::thread worker_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::optional<Batch>> queue_;  // nullopt marks the end of the epoch
  std::exception_ptr error_;
  bool stopping_ = false;
  bool finished_ = false;  // the worker has returned (after its last push or an error)
  NonFiniteReport dropped_;
};

}  // namespace toptag
