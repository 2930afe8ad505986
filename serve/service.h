// The protocol-independent core of toptag serve: model metadata, request validation, inference
// through the batching engine, and Triton-compatible metrics. The gRPC and HTTP front ends only
// translate messages to and from these types.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "nn/check.h"
#include "serve/engine.h"
#include "triton/model_config.h"

namespace toptag {

// A request the server refuses or cannot answer: the front ends map the kind to a gRPC status and an
// HTTP code:
//   invalid      400 INVALID_ARGUMENT     the request itself is wrong
//   not_found    404 NOT_FOUND            unknown model or version
//   unavailable  503 UNAVAILABLE          shutting down
//   exhausted    503 RESOURCE_EXHAUSTED   the queue is full (--max-queue): retry later
//   cancelled    499 CANCELLED            the client left, or its deadline passed, before the answer
//   internal     500 INTERNAL             the model itself failed (NaN/inf outputs)
class RequestError : public Error {
 public:
  enum class Kind { invalid, not_found, unavailable, exhausted, cancelled, internal };
  RequestError(Kind kind, const std::string& message) : Error(message), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

struct TensorMetadata {
  std::string name, datatype;
  std::vector<int64_t> shape;  // -1: variable
};

// One input tensor as a client sent it: float32 values, row-major.
struct InputTensor {
  std::string name, datatype;
  std::vector<int64_t> shape;
  std::span<const float> values;
};

// One tensor of a response: "probabilities" (n, 2) or "features" (n, F).
struct OutputTensor {
  std::string name;
  Tensor value;
};

struct ServiceLimits {
  int64_t max_request_jets = 4096;             // images or jets per request
  int64_t max_request_image_bytes = 64 << 20;  // the FP32 images a request becomes (constituents are imaged)
};

// How often something happened and how long it took in all (Triton's StatisticDuration).
struct DurationStatistic {
  uint64_t count = 0, ns = 0;
  void add(int64_t nanoseconds);
};

// The requests answered since the server started: Triton's per-model statistics (the statistics
// extension) and the Prometheus counters are both made from this one record. A request split into
// several executions counts once; its compute durations are those of each execution it was part of,
// whole, as Triton reports them (so with k requests in a batch, the requests' sum is k times the
// execution's own in BatchingEngine::batch_statistics). A request refused before it reached the model
// (an unknown model or version) is not counted.
// Failures are counted by reason too, as Triton's nv_inference_request_failure{reason=...}: REJECTED
// (queue full), CANCELED, BACKEND (the model failed), OTHER (a refused request).
struct RequestStatistics {
  uint64_t inference_count = 0;    // images or jets in the successful requests
  uint64_t last_inference_ms = 0;  // when the last request ended, successful or not: ms since the epoch (0: none)
  DurationStatistic success, fail, queue, compute_input, compute_infer, compute_output;
  uint64_t failed_rejected = 0, failed_cancelled = 0, failed_backend = 0, failed_other = 0;  // fail.count by reason
};

// RequestStatistics, counted from every thread that answers a request.
class ServiceMetrics {
 public:
  // A request of `jets` answered after `duration`; `r`: its wait and compute share.
  void count_success(int64_t jets, const EngineResult& r, std::chrono::nanoseconds duration);
  void count_failure(RequestError::Kind kind, std::chrono::nanoseconds duration);
  RequestStatistics snapshot() const;

 private:
  mutable std::mutex mutex_;
  RequestStatistics statistics_;
};

// Prometheus text format, with Triton's metric names; `executions` (nv_inference_exec_count) and
// `pending` (nv_inference_pending_request_count) come from the engine. Durations in microseconds,
// rounded down from the nanoseconds of the statistics.
std::string prometheus_text(const std::string& model, const RequestStatistics& s, uint64_t executions,
                            uint64_t pending);

// Triton's protocol extensions this server implements, as ServerMetadata lists them.
inline constexpr const char* kExtensions[] = {"binary_tensor_data", "model_configuration", "statistics"};

class InferenceService {
 public:
  // Throws toptag::Error unless `model_name` can be a Triton model name (check_triton_model_name).
  InferenceService(BatchingEngine& engine, std::string model_name, ServiceLimits limits = {});

  const std::string& model_name() const { return model_name_; }
  bool ready() const { return engine_.running(); }
  // Throws RequestError(not_found) unless `name` is this server's model (and version is "" or "1").
  void check_model(const std::string& name, const std::string& version = "") const;
  std::vector<TensorMetadata> inputs() const;
  std::vector<TensorMetadata> outputs() const;
  std::string platform() const { return "toptag_resnet"; }
  // The model as Triton's ModelConfig describes it (triton_model_config): the engine's batching and
  // instances, and inputs() and outputs(). Both inputs are optional: a request sends exactly one.
  TritonModel triton_model() const;

  // Validates the input ("images" [n, C, H, W] or "constituents" [n, 200, 4], FP32) and the requested
  // outputs ("probabilities", "features"; none asked for: probabilities), runs it in batches of at
  // most --max-batch images, records the success metrics and returns the outputs in the order asked.
  // `cancelled` is polled while the request waits (client gone, deadline passed): queued batches are
  // then dropped uncomputed. Throws RequestError; the front ends count failures (theirs and these)
  // with metrics().count_failure.
  std::vector<OutputTensor> infer(const std::string& model, const std::string& version, const InputTensor& input,
                                  const std::vector<std::string>& outputs, const std::function<bool()>& cancelled = {});

  ServiceMetrics& metrics() { return metrics_; }
  RequestStatistics statistics() const { return metrics_.snapshot(); }
  std::string metrics_text() const {
    return prometheus_text(model_name_, metrics_.snapshot(), engine_.executions(), engine_.queued());
  }
  const BatchingEngine& engine() const { return engine_; }

 private:
  // The images in parts of at most --max-batch, through the engine, joined again.
  EngineResult run(Tensor images, bool want_features, const std::function<bool()>& cancelled);

  BatchingEngine& engine_;
  std::string model_name_;
  ServiceLimits limits_;
  ServiceMetrics metrics_;
};

}  // namespace toptag
