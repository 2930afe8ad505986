#include "serve/service.h"

#include <fmt/format.h>

#include <chrono>

#include "data/jets.h"
#include "tagger/inference.h"

namespace toptag {

std::string ServiceMetrics::prometheus(const std::string& model, uint64_t executions) const {
  const std::string labels = fmt::format("{{model=\"{}\",version=\"{}\"}}", model, InferenceService::kVersion);
  std::string out;
  auto counter = [&](const char* name, const char* help, uint64_t value) {
    out += fmt::format("# HELP {} {}\n# TYPE {} counter\n{}{} {}\n", name, help, name, name, labels, value);
  };
  counter("nv_inference_request_success", "Number of successful inference requests", request_success.load());
  counter("nv_inference_request_failure", "Number of failed inference requests", request_failure.load());
  counter("nv_inference_count", "Number of inferences performed (one per image or jet)", inference_count.load());
  counter("nv_inference_exec_count", "Number of model executions (batches)", executions);
  counter("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
          request_duration_us.load());
  counter("nv_inference_queue_duration_us", "Cumulative time requests spent waiting in the queue in microseconds",
          queue_duration_us.load());
  counter("nv_inference_compute_infer_duration_us", "Cumulative model execution time in microseconds",
          compute_infer_duration_us.load());
  return out;
}

InferenceService::InferenceService(BatchingEngine& engine, std::string model_name, ServiceLimits limits)
    : engine_(engine), model_name_(std::move(model_name)), limits_(limits) {}

void InferenceService::check_model(const std::string& name, const std::string& version) const {
  if (name != model_name_)
    throw RequestError(RequestError::Kind::not_found,
                       fmt::format("unknown model '{}' (this server has '{}')", name, model_name_));
  if (!version.empty() && version != kVersion)
    throw RequestError(RequestError::Kind::not_found,
                       fmt::format("model '{}' has no version '{}' (only '{}')", name, version, kVersion));
}

std::vector<TensorMetadata> InferenceService::inputs() const {
  const ImageOptions& o = engine_.image_options();
  return {{"images", "FP32", {-1, o.channels, o.size, o.size}}, {"constituents", "FP32", {-1, kMaxConstituents, 4}}};
}

std::vector<TensorMetadata> InferenceService::outputs() const {
  return {{"probabilities", "FP32", {-1, 2}}, {"features", "FP32", {-1, engine_.feature_dim()}}};
}

std::vector<OutputTensor> InferenceService::infer(const std::string& model, const std::string& version,
                                                  const InputTensor& in, const std::vector<std::string>& requested) {
  const auto start = std::chrono::steady_clock::now();
  check_model(model, version);
  if (!ready()) throw RequestError(RequestError::Kind::unavailable, "the server is shutting down");
  auto invalid = [](const std::string& m) { return RequestError(RequestError::Kind::invalid, m); };
  const std::vector<std::string> outputs = requested.empty() ? std::vector<std::string>{"probabilities"} : requested;
  bool want_features = false;
  for (const std::string& o : outputs) {
    if (o == "features")
      want_features = true;
    else if (o != "probabilities")
      throw invalid(fmt::format("unknown output '{}' (probabilities, features)", o));
  }
  if (in.datatype != "FP32")
    throw invalid(fmt::format("input '{}' has datatype '{}'; expected FP32", in.name, in.datatype));
  for (int64_t d : in.shape)
    if (d < 0)
      throw invalid(
          fmt::format("input '{}' has a negative dimension in shape [{}]", in.name, fmt::join(in.shape, ",")));
  const std::string shape = fmt::format("[{}]", fmt::join(in.shape, ","));
  Tensor images;
  const ImageOptions& o = engine_.image_options();
  if (in.name == "images") {
    if (in.shape.size() != 4 || in.shape[1] != o.channels || in.shape[2] != o.size || in.shape[3] != o.size)
      throw invalid(
          fmt::format("input 'images' must have shape [-1,{},{},{}], got {}", o.channels, o.size, o.size, shape));
  } else if (in.name == "constituents") {
    if (in.shape.size() != 3 || in.shape[1] != kMaxConstituents || in.shape[2] != 4)
      throw invalid(fmt::format("input 'constituents' must have shape [-1,{},4], got {}", kMaxConstituents, shape));
  } else {
    throw invalid(fmt::format("unknown input '{}' (images, constituents)", in.name));
  }
  const int64_t n = in.shape[0];
  if (n == 0) throw invalid("empty batch: the first dimension of the input is 0");
  if (n > limits_.max_request_jets)
    throw invalid(fmt::format("{} jets in one request exceed the server's limit of {}", n, limits_.max_request_jets));
  int64_t count = 1;  // bounded now: every dimension but the first is fixed, the first is limited
  for (int64_t d : in.shape) count *= d;
  if (static_cast<int64_t>(in.values.size()) != count)
    throw invalid(fmt::format("input '{}' of shape {} needs {} values ({} bytes), got {}", in.name, shape, count,
                              count * 4, in.values.size()));
  if (!all_finite(in.values)) throw invalid(fmt::format("input '{}' holds NaN or inf", in.name));
  if (in.name == "images") {
    images = Tensor::from(Shape{n, o.channels, o.size, o.size}, in.values);
  } else {
    images = engine_.images_from_constituents(in.values, n, kMaxConstituents);
  }
  EngineResult r;
  try {
    r = engine_.submit(std::move(images), want_features).get();
  } catch (const RequestError&) {
    throw;
  } catch (const Error& e) {
    throw RequestError(RequestError::Kind::unavailable, e.what());
  }
  for (const Tensor* t : {&r.probabilities, want_features ? &r.features : nullptr}) {
    const int64_t bad = t ? first_non_finite_row(*t) : -1;
    if (bad >= 0)
      throw RequestError(RequestError::Kind::internal,
                         fmt::format("model '{}' gives NaN or inf {} for jet {} of the request (its weights or "
                                     "number format overflow on this input)",
                                     model_name_, t == &r.features ? "features" : "probabilities", bad));
  }
  metrics_.request_success++;
  metrics_.inference_count += static_cast<uint64_t>(n);
  metrics_.queue_duration_us += static_cast<uint64_t>(r.queue_us);
  metrics_.compute_infer_duration_us += static_cast<uint64_t>(r.compute_us * n / std::max<int64_t>(1, r.batch_images));
  metrics_.request_duration_us += static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start).count());
  std::vector<OutputTensor> out;
  for (const std::string& name : outputs) out.push_back({name, name == "features" ? r.features : r.probabilities});
  return out;
}

}  // namespace toptag
