// The protocol-independent core of toptag serve: model metadata, request validation, inference
// through the batching engine, and Triton-compatible metrics. The gRPC and HTTP front ends only
// translate messages to and from these types.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "nn/check.h"
#include "serve/engine.h"

namespace toptag {

// A request the server refuses or cannot answer: the front ends map the kind to a gRPC status or an
// HTTP code (internal: the model itself failed, HTTP 500 / gRPC INTERNAL).
class RequestError : public Error {
 public:
  enum class Kind { invalid, not_found, unavailable, internal };
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
  int64_t max_request_jets = 4096;  // images or jets per request
};

// Cumulative counters with Triton's metric names.
struct ServiceMetrics {
  std::atomic<uint64_t> request_success{0}, request_failure{0}, inference_count{0};
  std::atomic<uint64_t> request_duration_us{0}, queue_duration_us{0}, compute_infer_duration_us{0};
  // Prometheus text format; `executions` (nv_inference_exec_count) comes from the engine.
  std::string prometheus(const std::string& model, uint64_t executions) const;
};

class InferenceService {
 public:
  static constexpr const char* kVersion = "1";

  InferenceService(BatchingEngine& engine, std::string model_name, ServiceLimits limits = {});

  const std::string& model_name() const { return model_name_; }
  bool ready() const { return engine_.running(); }
  // Throws RequestError(not_found) unless `name` is this server's model (and version is "" or "1").
  void check_model(const std::string& name, const std::string& version = "") const;
  std::vector<TensorMetadata> inputs() const;
  std::vector<TensorMetadata> outputs() const;
  std::string platform() const { return "toptag_resnet"; }

  // Validates the input ("images" [n, C, H, W] or "constituents" [n, 200, 4], FP32) and the requested
  // outputs ("probabilities", "features"; none asked for: probabilities), runs it, records the
  // success metrics and returns the outputs in the order asked. Throws RequestError; the front ends
  // count failures (theirs and these) in metrics().request_failure.
  std::vector<OutputTensor> infer(const std::string& model, const std::string& version, const InputTensor& input,
                                  const std::vector<std::string>& outputs);

  ServiceMetrics& metrics() { return metrics_; }
  std::string metrics_text() const { return metrics_.prometheus(model_name_, engine_.executions()); }
  const BatchingEngine& engine() const { return engine_; }

 private:
  BatchingEngine& engine_;
  std::string model_name_;
  ServiceLimits limits_;
  ServiceMetrics metrics_;
};

}  // namespace toptag
