#include "serve/engine.h"

#include <fmt/format.h>

#include <cstring>

#include "nn/blas.h"
#include "nn/check.h"
#include "nn/inference_plan.h"
#include "nn/parallel.h"
#include "tagger/scores.h"

namespace toptag {

using Clock = std::chrono::steady_clock;

namespace {
int64_t nanos(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}
}  // namespace

BatchingEngine::BatchingEngine(Tagger tagger, const EngineOptions& options)
    : tagger_(std::move(tagger)), options_(options), feature_dim_(tagger_.model->feature_dim()) {
  if (options.max_batch < 1) fail("--max-batch must be at least 1, got {}", options.max_batch);
  if (options.max_queue < 1) fail("--max-queue must be at least 1, got {}", options.max_queue);
  if (options.max_queue_delay_us < 0) fail("--max-queue-delay-us must be >= 0, got {}", options.max_queue_delay_us);
  validate(tagger_.images);
  check_channels(*tagger_.model, tagger_.images, "toptag serve");
  const int cores = usable_cpus().count;  // the affinity mask and cgroup quota, not the machine
  if (options_.instances <= 0) options_.instances = 1;
  if (options_.threads <= 0) options_.threads = std::max(1, cores / options_.instances);
  tagger_.model->set_training(false);
  // Weights quantized once, not per batch, and packed, on a thread that ends with it: its OpenMP
  // pool must not outlive it (nn/parallel.h).
  run_on_passing_thread([&] { freeze_for_inference(tagger_); });
  plan_ = tagger_.model->frozen();
  // Loading OpenBLAS may set OPENBLAS_CORETYPE in the environment: done here, before the workers
  // start, so that no worker's first batch calls setenv while another thread reads the environment
  // (gRPC's grpc_init reads it as the front end starts, and getenv racing setenv crashes).
  blas_info();
  for (int i = 0; i < options_.instances; ++i) workers_.emplace_back([this] { work(); });
}

BatchingEngine::~BatchingEngine() {
  stop();
}

std::string BatchingEngine::describe() const {
  const ResNetConfig& c = tagger_.model->config();
  return fmt::format("{} (width {}, {} features){}; images {}; {} instance(s) x {} thread(s); {}", c.arch, c.width,
                     feature_dim_, tagger_.quantized() ? ", quantized: " + tagger_.quantization->describe() : "",
                     tagger_.images.describe(), options_.instances, options_.threads, tagger_.describe_engine());
}

bool BatchingEngine::running() const {
  std::lock_guard lock(mutex_);
  return !stopping_;
}

Tensor BatchingEngine::images_from_constituents(std::span<const float> constituents, int64_t n,
                                                int n_constituents) const {
  const SerialOpenMp serial;  // a request handler: it must open no OpenMP pool (nn/parallel.h)
  return jet_images(constituents, n, n_constituents, tagger_.images);
}

size_t BatchingEngine::queued() const {
  std::lock_guard lock(mutex_);
  return queue_.size();
}

std::vector<std::future<EngineResult>> BatchingEngine::submit(std::vector<Tensor> parts, bool want_features,
                                                              CancelFlag cancelled) {
  const ImageOptions& o = tagger_.images;
  for (const Tensor& images : parts) {
    const Shape want{images.rank() == 4 ? images.dim(0) : 0, o.channels, o.size, o.size};
    if (images.rank() != 4 || !(images.shape() == want))
      fail("images must have shape [N, {}, {}, {}], got {}", o.channels, o.size, o.size, images.shape().str());
    if (images.dim(0) < 1) fail("empty batch: a request needs at least one image");
    if (images.dim(0) > options_.max_batch)
      fail("{} images in one batch exceed --max-batch {}", images.dim(0), options_.max_batch);
  }
  std::vector<std::future<EngineResult>> results;
  {
    std::lock_guard lock(mutex_);
    if (stopping_) fail("the server is shutting down");
    if (queue_.size() + parts.size() > static_cast<size_t>(options_.max_queue))
      throw QueueFull(fmt::format("the server's queue is full ({} batches waiting, --max-queue {}); retry later",
                                  queue_.size(), options_.max_queue));
    for (Tensor& images : parts) {
      Pending p{std::move(images), want_features, cancelled, {}, Clock::now()};
      results.push_back(p.promise.get_future());
      queued_images_ += p.images.dim(0);
      queue_.push_back(std::move(p));
    }
  }
  changed_.notify_all();
  return results;
}

void BatchingEngine::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  for (std::thread& w : workers_)
    if (w.joinable()) w.join();
}

void BatchingEngine::work() {
  set_num_threads(options_.threads);  // OpenMP settings are per thread: apply them to this one
  std::vector<Pending> taken;
  int64_t expected = 0;  // images this instance expects back: the clients it answered last, and those queued then
  for (;;) {
    if (!take(taken, options_.max_batch, true)) return;
    const auto deadline = Clock::now() + std::chrono::microseconds(options_.max_queue_delay_us);
    Execution e;
    for (;;) {
      begin(e, taken);
      if (options_.after_early_layers) options_.after_early_layers();
      if (e.images >= options_.max_batch) break;
      const int64_t room = options_.max_batch - e.images;
      // Nothing waits now: run the late layers, unless the clients answered last are still on their
      // way back (they come back one by one: without the wait, the first of them ran alone, and a
      // straggler went on running alone execution after execution).
      bool more = take(taken, room, false);
      while (!more && e.images < expected && await_arrival(deadline, room)) more = take(taken, room, false);
      if (!more) break;
    }
    finish(e);
    std::lock_guard lock(mutex_);
    --computing_;
    expected = std::min(options_.max_batch, e.images + e.queued_when_answered);
  }
}

bool BatchingEngine::await_arrival(Clock::time_point deadline, int64_t room) {
  std::unique_lock lock(mutex_);
  changed_.wait_until(lock, deadline, [&] { return stopping_ || !queue_.empty(); });
  // A part too large for the room left holds up the queue behind it: no use waiting.
  return !stopping_ && !queue_.empty() && queue_.front().images.dim(0) <= room && Clock::now() < deadline;
}

bool BatchingEngine::take(std::vector<Pending>& taken, int64_t room, bool idle) {
  std::unique_lock lock(mutex_);
  for (;;) {
    if (idle) {
      changed_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return false;  // stopping, and nothing left to answer
      // Wait for the batch to fill, at most max_queue_delay after the oldest request arrived; but
      // only while another instance is computing. With every instance idle, nothing suggests more
      // requests are about to come (one client alone gets no added latency); with one busy, its
      // clients come back as soon as it answers them, and a fuller batch is worth the wait.
      if (computing_ > 0) {
        const auto deadline = queue_.front().arrival + std::chrono::microseconds(options_.max_queue_delay_us);
        changed_.wait_until(lock, deadline, [&] { return stopping_ || queue_.empty() || queued_images_ >= room; });
        if (queue_.empty()) continue;  // another instance took them
      }
    }
    int64_t images = 0;
    while (!queue_.empty() && images + queue_.front().images.dim(0) <= room) {
      Pending p = std::move(queue_.front());
      queue_.pop_front();
      queued_images_ -= p.images.dim(0);
      if (p.cancelled && p.cancelled->load()) {  // its client is gone: do not compute it
        p.promise.set_exception(std::make_exception_ptr(Cancelled("the client cancelled the request")));
        continue;
      }
      images += p.images.dim(0);
      taken.push_back(std::move(p));
    }
    if (!taken.empty() || !idle) break;
  }
  if (taken.empty()) return false;
  if (idle) ++computing_;
  lock.unlock();
  changed_.notify_all();  // the queue changed: an instance waiting on it re-reads it
  return true;
}

void BatchingEngine::begin(Execution& e, std::vector<Pending>& taken) {
  const auto start = Clock::now();
  try {
    std::vector<Tensor> images;
    int64_t n = 0;
    for (const Pending& p : taken) {
      images.push_back(p.images);
      n += p.images.dim(0);
    }
    const Tensor batch = concat_rows(images);
    const auto assembled = Clock::now();
    NoGradGuard no_grad;
    Tensor partial = plan_ ? plan_->begin_features(batch) : batch;
    e.requests.reserve(e.requests.size() + taken.size());
    e.partials.reserve(e.partials.size() + 1);
    // Nothing below throws: the part joins the execution whole.
    e.partials.push_back(std::move(partial));
    for (Pending& p : taken) {
      p.queue_ns = nanos(start - p.arrival);
      p.input_before_ns = e.input_ns;
      p.infer_before_ns = e.infer_ns;
      e.requests.push_back(std::move(p));
    }
    e.images += n;
    e.input_ns += nanos(assembled - start);
    e.infer_ns += nanos(Clock::now() - assembled);
  } catch (...) {  // this part's requests only: none of them has joined the execution
    for (Pending& p : taken) p.promise.set_exception(std::current_exception());
  }
  taken.clear();
}

void BatchingEngine::finish(Execution& e) {
  if (e.requests.empty()) return;  // every part failed, and was answered
  size_t answered = 0;
  try {
    const auto start = Clock::now();
    const Tensor partial = concat_rows(e.partials);
    e.partials.clear();
    const auto assembled = Clock::now();
    NoGradGuard no_grad;
    ResNet& model = *tagger_.model;
    const Tensor features = plan_ ? plan_->finish_features(partial) : model.features(Var(partial)).value();
    const Tensor probabilities = class_probabilities(model.head(Var(features)).value());
    const auto computed = Clock::now();
    std::vector<EngineResult> results = split(e.requests, features, probabilities);
    const auto extracted = Clock::now();
    const int64_t input_ns = e.input_ns + nanos(assembled - start), infer_ns = e.infer_ns + nanos(computed - assembled),
                  output_ns = nanos(extracted - computed);
    {  // counted before any client is answered, so an answered request's execution is in the statistics
      std::lock_guard lock(statistics_mutex_);
      BatchStatistics& s = batch_statistics_[e.images];
      ++s.executions;
      s.compute_input_ns += static_cast<uint64_t>(input_ns);
      s.compute_infer_ns += static_cast<uint64_t>(infer_ns);
      s.compute_output_ns += static_cast<uint64_t>(output_ns);
    }
    {  // before answering: a client answered may be back in the queue at once
      std::lock_guard lock(mutex_);
      e.queued_when_answered = queued_images_;
    }
    for (size_t b = 0; b < e.requests.size(); ++b) {
      EngineResult& r = results[b];
      const Pending& p = e.requests[b];
      r.queue_ns = p.queue_ns;
      r.compute_input_ns = input_ns - p.input_before_ns;
      r.compute_infer_ns = infer_ns - p.infer_before_ns;
      r.compute_output_ns = output_ns;
      r.batch_images = e.images;
      e.requests[b].promise.set_value(std::move(r));
      ++answered;
    }
  } catch (...) {  // only the requests not answered yet: a promise is set once
    for (size_t i = answered; i < e.requests.size(); ++i) e.requests[i].promise.set_exception(std::current_exception());
  }
}

std::vector<EngineResult> BatchingEngine::split(const std::vector<Pending>& batch, const Tensor& features,
                                                const Tensor& probabilities) const {
  std::vector<EngineResult> results(batch.size());
  int64_t row = 0;
  for (size_t b = 0; b < batch.size(); ++b) {
    const int64_t m = batch[b].images.dim(0);
    EngineResult& r = results[b];
    const float* rows = features.data() + row * feature_dim_;
    for (int64_t i = 0; i < m && r.first_non_finite_features < 0; ++i)
      if (!all_finite(std::span<const float>(rows + i * feature_dim_, static_cast<size_t>(feature_dim_))))
        r.first_non_finite_features = i;
    r.probabilities = Tensor::empty({m, 2});
    std::memcpy(r.probabilities.data(), probabilities.data() + row * 2, m * 2 * sizeof(float));
    if (batch[b].want_features) {
      r.features = Tensor::empty({m, feature_dim_});
      std::memcpy(r.features.data(), rows, m * feature_dim_ * sizeof(float));
    }
    row += m;
  }
  return results;
}

uint64_t BatchingEngine::executions() const {
  std::lock_guard lock(statistics_mutex_);
  uint64_t sum = 0;
  for (const auto& [size, s] : batch_statistics_) sum += s.executions;
  return sum;
}

std::map<int64_t, BatchStatistics> BatchingEngine::batch_statistics() const {
  std::lock_guard lock(statistics_mutex_);
  return batch_statistics_;
}

}  // namespace toptag
