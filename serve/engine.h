// Dynamic batching (as Triton's dynamic batcher): requests from every client wait in one queue; a
// worker thread per model instance (Triton's instance_group) takes as many as fit in --max-batch
// images, runs the model once on the whole batch, and hands every request its own rows. While
// another instance is computing, an idle one first waits up to --max-queue-delay-us after the oldest
// request arrived for more to come; with every instance idle it starts at once, so a lone client
// pays no delay.
//
// An execution is gathered while it computes: the instance runs the early layers
// (FrozenResNet::begin_features) on what it took, then on whatever came meanwhile, and so on up to
// --max-batch; when nothing more waits it runs the late layers once on all of it. The late layers
// hold most of the weights, and reading them bounds a small batch, so clients answered together
// come back one by one without splitting into small batches taking turns. (A model that is not
// frozen, --emulate, runs whole in the last step.) Before the late layers, it waits, up to
// --max-queue-delay-us from the execution's start, until it holds as many images as it answered
// last time plus those queued then: those clients are on their way back. Every row is computed
// independently of the others in its batch, so a response is what the request would get alone (up
// to rounding in the matrix products). The queue is bounded (--max-queue batches): beyond it, work
// is refused at once rather than left to pile up, and a part whose client has gone is dropped before
// it is computed.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "nn/check.h"
#include "tagger/tagger.h"
#include "triton/model_config.h"

namespace toptag {

struct EngineOptions {
  int64_t max_batch = kDefaultMaxBatch;  // images per execution; submit() takes at most this many at once
  int64_t max_queue = 256;               // batches waiting for an instance; beyond it submit() refuses (QueueFull)
  int64_t max_queue_delay_us = kDefaultMaxQueueDelayUs;
  // Model instances: worker threads that each run one batch at a time, sharing the read-only
  // weights; with two, one batch fills while the other computes. 0: one, with every core: on two
  // cores it served 16 clients faster than two of one thread each, and a lone client in half the
  // time, since one instance gathers its batch while it computes (begin_features).
  int instances = 0;
  int threads = 0;  // OpenMP/OpenBLAS threads of each instance (0: the cores divided among instances)
  // Called by a worker after each part's early layers, before it looks for more requests to gather:
  // tests submit there, so that a request arrives while an execution is gathered.
  std::function<void()> after_early_layers;
};

// submit() refused work because max_queue batches are already waiting.
class QueueFull : public Error {
 public:
  using Error::Error;
};

// A request whose client gave up (cancel flag set) before an instance took it: dropped uncomputed.
class Cancelled : public Error {
 public:
  using Error::Error;
};

// Set by the front end when its client disconnects or its deadline passes.
using CancelFlag = std::shared_ptr<std::atomic<bool>>;

struct EngineResult {
  Tensor probabilities;  // (n, 2): P(QCD), P(top)
  Tensor features;       // (n, feature_dim) when requested
  // The first row whose features hold NaN or inf, requested or not (-1: none): the head's ReLU can
  // turn a -inf feature into ordinary-looking probabilities.
  int64_t first_non_finite_features = -1;
  // Nanoseconds, for the statistics: how long this part waited in the queue, and how long its
  // execution (of batch_images images, all requests' together) took to assemble its input, run the
  // model and extract the outputs, from the moment this part was taken: a part that joined an
  // execution later is not charged for the early layers that ran before it.
  int64_t queue_ns = 0, compute_input_ns = 0, compute_infer_ns = 0, compute_output_ns = 0, batch_images = 0;
};

// The executions of one batch size so far (Triton's InferBatchStatistics): how many, and their
// durations in nanoseconds.
struct BatchStatistics {
  uint64_t executions = 0, compute_input_ns = 0, compute_infer_ns = 0, compute_output_ns = 0;
};

class BatchingEngine {
 public:
  // tagger.images: the preprocessing applied to "constituents" inputs, and the image shape every
  // request must have.
  BatchingEngine(Tagger tagger, const EngineOptions& options);
  ~BatchingEngine();
  BatchingEngine(const BatchingEngine&) = delete;
  BatchingEngine& operator=(const BatchingEngine&) = delete;

  // Queues every part of one request at once, or none (QueueFull when fewer than parts.size() places
  // are left). Each part: (n, C, H, W) with 1 <= n <= max_batch and C, H, W as the engine expects
  // (toptag::Error otherwise). The parts are independent batches, so idle instances share them.
  // A part whose `cancelled` flag is set before an instance takes it fails with Cancelled. Thread-safe.
  std::vector<std::future<EngineResult>> submit(std::vector<Tensor> parts, bool want_features,
                                                CancelFlag cancelled = nullptr);
  // Jets (n x n_constituents x 4: E, px, py, pz) -> images, with the model's preprocessing.
  Tensor images_from_constituents(std::span<const float> constituents, int64_t n, int n_constituents) const;

  // Finishes every queued request, then stops the worker. Later submits fail.
  void stop();
  bool running() const;

  uint64_t executions() const;                                  // batches run so far
  std::map<int64_t, BatchStatistics> batch_statistics() const;  // the same, by batch size (images)
  size_t queued() const;                                        // batches waiting now
  int64_t max_batch() const { return options_.max_batch; }
  int64_t max_queue_delay_us() const { return options_.max_queue_delay_us; }
  size_t max_queue() const { return static_cast<size_t>(options_.max_queue); }
  const ImageOptions& image_options() const { return tagger_.images; }
  int64_t feature_dim() const { return feature_dim_; }
  std::string describe() const;  // model summary for metadata and logs
  int instances() const { return options_.instances; }
  int threads_per_instance() const { return options_.threads; }

 private:
  struct Pending {
    Tensor images;
    bool want_features;
    CancelFlag cancelled;
    std::promise<EngineResult> promise;
    std::chrono::steady_clock::time_point arrival;
    // Set as it joins an execution: its wait in the queue, and the execution's input and infer time
    // before its part began (a request joining later is charged only what ran after it was taken;
    // what ran before is in its queue time).
    int64_t queue_ns = 0, input_before_ns = 0, infer_before_ns = 0;
  };
  // One model execution as it is gathered: its requests, the output of their early layers, and
  // the time spent so far.
  struct Execution {
    std::vector<Pending> requests;
    std::vector<Tensor> partials;  // begin_features of each part taken (the images if not frozen)
    int64_t images = 0, input_ns = 0, infer_ns = 0;
    int64_t queued_when_answered = 0;  // images in the queue just before finish() answered it
  };
  void work();
  // Moves queued requests of at most `room` images in all into `taken`, answering those whose
  // client is gone. idle: this instance has nothing in hand: waits for work (false: stopping and
  // none left), and while another instance computes, up to max_queue_delay for the batch to fill;
  // counts the instance as computing once it returns true. Otherwise takes only what waits now
  // (false: nothing).
  bool take(std::vector<Pending>& taken, int64_t room, bool idle);
  // Waits until a request is queued, and says whether the first one fits in `room` images; false at
  // `deadline` or stop().
  bool await_arrival(std::chrono::steady_clock::time_point deadline, int64_t room);
  // Runs the early layers on `taken` and adds them to the execution; a failure answers them.
  void begin(Execution& e, std::vector<Pending>& taken);
  // Runs the late layers and the head on the whole execution and answers its requests.
  void finish(Execution& e);
  // Each request's rows of the batch's outputs (features only where asked for), and where its
  // features first hold NaN or inf.
  std::vector<EngineResult> split(const std::vector<Pending>& batch, const Tensor& features,
                                  const Tensor& probabilities) const;
  const FrozenResNet* plan_ = nullptr;  // the frozen model, run in two parts; null: the autograd ops

  Tagger tagger_;
  EngineOptions options_;
  int64_t feature_dim_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Pending> queue_;
  int64_t queued_images_ = 0;
  int computing_ = 0;  // instances running a batch now
  bool stopping_ = false;
  mutable std::mutex statistics_mutex_;
  std::map<int64_t, BatchStatistics> batch_statistics_;  // by batch size; recorded before a batch is answered
  std::vector<std::thread> workers_;
};

}  // namespace toptag
