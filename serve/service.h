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
#include "serve/parameters.h"
#include "serve/request_error.h"
#include "serve/shared_memory.h"
#include "triton/model_config.h"

namespace toptag {

struct TensorMetadata {
  std::string name, datatype;
  std::vector<int64_t> shape;  // -1: variable
};

// One input tensor as a client sent it: float32 values, row-major.
struct InputTensor {
  std::string name, datatype;
  std::vector<int64_t> shape;
  std::span<const float> values;
  Parameters parameters;  // those the front end did not take itself (serve/parameters.h)
};

// An output a client asks for, by name. With parameter "classification" = k (Triton's
// classification extension) the answer is not the FP32 tensor but, per jet, its k most probable
// classes as BYTES strings "probability:index:label", most probable first.
struct OutputRequest {
  std::string name;
  Parameters parameters;  // those the front end did not take itself
};

// A whole inference request, as both front ends hand it to the service.
struct InferRequest {
  std::string model, version;
  Parameters parameters;  // the request's own, less those the front end took itself
  InputTensor input;
  std::vector<OutputRequest> outputs;  // none: probabilities
};

// One tensor of a response: "probabilities" (n, 2) or "features" (n, F), FP32, or a classification
// of the probabilities: (n, k) BYTES.
struct OutputTensor {
  std::string name;
  Tensor value;                      // the FP32 tensor; unused by a classification
  std::vector<std::string> classes;  // a classification's n x k strings, row-major
  int64_t k = 0;                     // a classification's classes per jet; 0: the FP32 tensor

  std::string datatype() const { return k > 0 ? "BYTES" : "FP32"; }
  // Set when the tensor was written to a client's shared-memory region instead of being sent: the
  // front ends then send its name, datatype and shape, with these as its parameters.
  std::string shared_memory_region;
  uint64_t shared_memory_byte_size = 0;

  std::vector<int64_t> shape() const;
  // Appends the tensor's bytes as gRPC's raw_output_contents and HTTP's binary extension carry
  // them: FP32 little-endian, or BYTES as each string's 4-byte little-endian length, then the string.
  void append_raw(std::string& out) const;
};

// The class labels of the probabilities' columns, as the classification extension names them.
inline constexpr const char* kClassLabels[] = {"QCD", "top"};

struct ServiceLimits {
  int64_t max_request_jets = 4096;             // images or jets per request
  int64_t max_request_image_bytes = 64 << 20;  // the FP32 images a request becomes (constituents are imaged)
  // Clients may register system shared-memory regions. A client that reaches the server can then make
  // it read and write any POSIX shared-memory object the server's user may open, as with Triton:
  // `toptag serve --shared-memory none` turns the extension off where clients are not trusted.
  bool system_shared_memory = true;
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
  // Triton's protocol extensions this server implements, as ServerMetadata lists them.
  std::vector<std::string> extensions() const;
  // The model as Triton's ModelConfig describes it (triton_model_config): the engine's batching and
  // instances, and inputs() and outputs(). Both inputs are optional: a request sends exactly one.
  TritonModel triton_model() const;

  // Validates the input ("images" [n, C, H, W] or "constituents" [n, 200, 4], FP32), the requested
  // outputs ("probabilities", "features"; none asked for: probabilities) and every parameter
  // (serve/parameters.h), runs it in batches of at most --max-batch images, records the success
  // metrics and returns the outputs in the order asked. `cancelled` is polled while the request
  // waits (client gone, deadline passed), as is the request's own "timeout": queued batches are
  // then dropped uncomputed. Throws RequestError; the front ends count failures (theirs and these)
  // with metrics().count_failure.
  std::vector<OutputTensor> infer(const InferRequest& request, const std::function<bool()>& cancelled = {});
  // The same for a request without parameters, as in-process callers make one.
  std::vector<OutputTensor> infer(const std::string& model, const std::string& version, const InputTensor& input,
                                  const std::vector<std::string>& outputs, const std::function<bool()>& cancelled = {});

  // The clients' system shared-memory regions, which inputs and outputs may name.
  SharedMemoryRegistry& shared_memory() { return shared_memory_; }
  // Registers a region with shared_memory(); refused (invalid) when the limits turn it off.
  void register_shared_memory(const std::string& name, const std::string& key, uint64_t offset, uint64_t byte_size);
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
  SharedMemoryRegistry shared_memory_;
};

}  // namespace toptag
