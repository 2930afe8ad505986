#include "serve/service.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>

#include "data/jets.h"
#include "tagger/inference.h"

namespace toptag {

namespace {

// "[1,1,40,40]", at most 8 dimensions shown.
std::string shape_text(const std::vector<int64_t>& shape) {
  if (shape.size() <= 8) return fmt::format("[{}]", fmt::join(shape, ","));
  return fmt::format("[{},... ({} dimensions)]", fmt::join(shape.begin(), shape.begin() + 8, ","), shape.size());
}

}  // namespace

void DurationStatistic::add(int64_t nanoseconds) {
  ++count;
  ns += static_cast<uint64_t>(std::max<int64_t>(0, nanoseconds));
}

namespace {

uint64_t now_ms_since_epoch() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

}  // namespace

void ServiceMetrics::count_success(int64_t jets, const EngineResult& r, std::chrono::nanoseconds duration) {
  const uint64_t now = now_ms_since_epoch();
  std::lock_guard lock(mutex_);
  RequestStatistics& s = statistics_;
  s.inference_count += static_cast<uint64_t>(jets);
  s.last_inference_ms = std::max(s.last_inference_ms, now);
  s.success.add(duration.count());
  s.queue.add(r.queue_ns);
  s.compute_input.add(r.compute_input_ns);
  s.compute_infer.add(r.compute_infer_ns);
  s.compute_output.add(r.compute_output_ns);
}

void ServiceMetrics::count_failure(RequestError::Kind kind, std::chrono::nanoseconds duration) {
  const uint64_t now = now_ms_since_epoch();
  std::lock_guard lock(mutex_);
  RequestStatistics& s = statistics_;
  s.last_inference_ms = std::max(s.last_inference_ms, now);
  s.fail.add(duration.count());
  switch (kind) {
    case RequestError::Kind::exhausted:
      ++s.failed_rejected;
      return;
    case RequestError::Kind::cancelled:
    case RequestError::Kind::timeout:  // dropped as a cancelled one is
      ++s.failed_cancelled;
      return;
    case RequestError::Kind::internal:
      ++s.failed_backend;
      return;
    default:
      ++s.failed_other;
  }
}

RequestStatistics ServiceMetrics::snapshot() const {
  std::lock_guard lock(mutex_);
  return statistics_;
}

std::string prometheus_text(const std::string& model, const RequestStatistics& s, uint64_t executions,
                            uint64_t pending) {
  const std::string labels = fmt::format("{{model=\"{}\",version=\"{}\"}}", model, kModelVersion);
  std::string out;
  auto metric = [&](const char* type, const char* name, const char* help, uint64_t value) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{}{} {}\n", name, help, name, type, name, labels, value);
  };
  auto counter = [&](const char* name, const char* help, uint64_t value) { metric("counter", name, help, value); };
  counter("nv_inference_request_success", "Number of successful inference requests", s.success.count);
  out +=
      "# HELP nv_inference_request_failure Number of failed inference requests, by reason\n"
      "# TYPE nv_inference_request_failure counter\n";
  for (auto [reason, value] : {std::pair{"REJECTED", s.failed_rejected},
                               {"CANCELED", s.failed_cancelled},
                               {"BACKEND", s.failed_backend},
                               {"OTHER", s.failed_other}})
    out += fmt::format("nv_inference_request_failure{{model=\"{}\",reason=\"{}\",version=\"{}\"}} {}\n", model, reason,
                       kModelVersion, value);
  metric("gauge", "nv_inference_pending_request_count", "Batches waiting in the queue for a model instance", pending);
  counter("nv_inference_count", "Number of inferences performed (one per image or jet)", s.inference_count);
  counter("nv_inference_exec_count", "Number of model executions (batches)", executions);
  counter("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
          s.success.ns / 1000);
  counter("nv_inference_queue_duration_us", "Cumulative time requests spent waiting in the queue in microseconds",
          s.queue.ns / 1000);
  counter("nv_inference_compute_input_duration_us",
          "Cumulative time assembling the inputs of the executions, requests' shares, in microseconds",
          s.compute_input.ns / 1000);
  counter("nv_inference_compute_infer_duration_us",
          "Cumulative model execution time, requests' shares, in microseconds", s.compute_infer.ns / 1000);
  counter("nv_inference_compute_output_duration_us",
          "Cumulative time extracting the outputs of the executions, requests' shares, in microseconds",
          s.compute_output.ns / 1000);
  return out;
}

InferenceService::InferenceService(BatchingEngine& engine, std::string model_name, ServiceLimits limits)
    : engine_(engine), model_name_(std::move(model_name)), limits_(limits) {
  check_triton_model_name(model_name_);
  // GET /v2/models/stats is every model's statistics, so a model of that name could not be described.
  if (model_name_ == "stats") fail("model name 'stats' is taken by the HTTP path /v2/models/stats");
}

std::vector<std::string> InferenceService::extensions() const {
  std::vector<std::string> out = {"binary_tensor_data", "classification", "model_configuration", "statistics"};
  if (limits_.system_shared_memory) out.push_back("system_shared_memory");
  return out;
}

void InferenceService::register_shared_memory(const std::string& name, const std::string& key, uint64_t offset,
                                              uint64_t byte_size) {
  if (!limits_.system_shared_memory)
    throw RequestError(RequestError::Kind::invalid,
                       "system shared memory is turned off on this server (toptag serve --shared-memory none)");
  shared_memory_.register_region(name, key, offset, byte_size);
}

void InferenceService::check_model(const std::string& name, const std::string& version) const {
  if (name != model_name_)
    throw RequestError(RequestError::Kind::not_found,
                       fmt::format("unknown model '{}' (this server has '{}')", clip(name), model_name_));
  if (!version.empty() && version != kModelVersion)
    throw RequestError(RequestError::Kind::not_found, fmt::format("model '{}' has no version '{}' (only '{}')",
                                                                  clip(name), clip(version), kModelVersion));
}

std::vector<TensorMetadata> InferenceService::inputs() const {
  const ImageOptions& o = engine_.image_options();
  return {{kImagesTensor, "FP32", {-1, o.channels, o.size, o.size}},
          {kConstituentsTensor, "FP32", {-1, kMaxConstituents, 4}}};
}

std::vector<TensorMetadata> InferenceService::outputs() const {
  return {{kProbabilitiesTensor, "FP32", {-1, 2}}, {kFeaturesTensor, "FP32", {-1, engine_.feature_dim()}}};
}

TritonModel InferenceService::triton_model() const {
  TritonModel m;
  m.name = model_name_;
  m.platform = platform();
  m.backend = "toptag";
  m.max_batch = engine_.max_batch();
  m.max_queue_delay_us = engine_.max_queue_delay_us();
  m.instances = engine_.instances();
  for (const TensorMetadata& t : inputs()) m.inputs.push_back({t.name, t.shape, true});
  for (const TensorMetadata& t : outputs()) m.outputs.push_back({t.name, t.shape});
  return m;
}

namespace {

// Rows [begin, begin + count) of a (n, ...) tensor, as a tensor of its own.
Tensor rows(const Tensor& t, int64_t begin, int64_t count) {
  Shape shape = t.shape();
  shape[0] = count;
  const int64_t per = t.numel() / t.dim(0);
  return Tensor::from(shape, std::span<const float>(t.data() + begin * per, static_cast<size_t>(count * per)));
}

// The parts' rows, stacked in order.
Tensor stack_rows(const std::vector<Tensor>& parts, int64_t n) {
  if (parts.size() == 1) return parts[0];
  Shape shape = parts[0].shape();
  shape[0] = n;
  Tensor out = Tensor::empty(shape);
  float* dst = out.data();
  for (const Tensor& p : parts) dst = std::copy(p.data(), p.data() + p.numel(), dst);
  return out;
}

}  // namespace

EngineResult InferenceService::run(Tensor images, bool want_features, const std::function<bool()>& cancelled) {
  const int64_t n = images.dim(0), max_batch = engine_.max_batch();
  std::vector<Tensor> parts;
  if (n <= max_batch) {
    parts.push_back(std::move(images));
  } else {
    for (int64_t begin = 0; begin < n; begin += max_batch)
      parts.push_back(rows(images, begin, std::min(max_batch, n - begin)));
  }
  if (parts.size() > engine_.max_queue())
    throw RequestError(RequestError::Kind::invalid,
                       fmt::format("{} jets make {} executions of --max-batch {}, more than the server's queue holds "
                                   "({}): send fewer jets per request",
                                   n, parts.size(), max_batch, engine_.max_queue()));
  // Set on every way out but success: the parts still queued are then dropped, not computed.
  CancelFlag flag = std::make_shared<std::atomic<bool>>(false);
  if (cancelled && cancelled())  // the client left while the request was read and checked
    throw RequestError(RequestError::Kind::cancelled, "the client cancelled the request or its deadline passed");
  std::vector<std::future<EngineResult>> futures;
  try {
    futures = engine_.submit(std::move(parts), want_features, flag);
  } catch (const QueueFull& e) {
    throw RequestError(RequestError::Kind::exhausted, e.what());
  } catch (const Error& e) {
    throw RequestError(RequestError::Kind::unavailable, e.what());
  }
  EngineResult r;
  std::vector<Tensor> probabilities, features;
  int64_t answered = 0;  // rows of the request in the parts read so far
  try {
    for (std::future<EngineResult>& f : futures) {
      while (cancelled && f.wait_for(std::chrono::milliseconds(10)) != std::future_status::ready) {
        if (cancelled()) {
          flag->store(true);  // queued parts are dropped; a part being computed finishes unread
          throw RequestError(RequestError::Kind::cancelled, "the client cancelled the request or its deadline passed");
        }
      }
      EngineResult part = f.get();
      // Every execution the request was part of, whole: what Triton's backends report for each request
      // of a batch, and what perf_analyzer divides by the request count.
      r.queue_ns = std::max(r.queue_ns, part.queue_ns);
      r.compute_input_ns += part.compute_input_ns;
      r.compute_infer_ns += part.compute_infer_ns;
      r.compute_output_ns += part.compute_output_ns;
      if (r.first_non_finite_features < 0 && part.first_non_finite_features >= 0)
        r.first_non_finite_features = answered + part.first_non_finite_features;
      answered += part.probabilities.dim(0);
      probabilities.push_back(std::move(part.probabilities));
      if (want_features) features.push_back(std::move(part.features));
    }
  } catch (const Cancelled& e) {
    flag->store(true);
    throw RequestError(RequestError::Kind::cancelled, e.what());
  } catch (const RequestError&) {
    flag->store(true);
    throw;
  } catch (const Error& e) {
    flag->store(true);
    throw RequestError(RequestError::Kind::unavailable, e.what());
  } catch (...) {
    flag->store(true);
    throw;
  }
  r.probabilities = stack_rows(probabilities, n);
  if (want_features) r.features = stack_rows(features, n);
  r.batch_images = n;
  return r;
}

std::vector<int64_t> OutputTensor::shape() const {
  if (k > 0) return {static_cast<int64_t>(classes.size()) / k, k};
  return {value.dim(0), value.dim(1)};
}

void OutputTensor::append_raw(std::string& out) const {
  if (k == 0) {  // little-endian FP32, as on every supported host
    out.append(reinterpret_cast<const char*>(value.data()), static_cast<size_t>(value.numel()) * 4);
    return;
  }
  for (const std::string& c : classes) {
    const uint32_t n = static_cast<uint32_t>(c.size());
    const char length[4] = {static_cast<char>(n), static_cast<char>(n >> 8), static_cast<char>(n >> 16),
                            static_cast<char>(n >> 24)};
    out.append(length, 4);
    out += c;
  }
}

namespace {

// Triton's classification of each row of `probabilities` (n, K): its k largest values, largest
// first (ties: the lower index first), each as "value:index:label".
std::vector<std::string> classify(const Tensor& probabilities, int64_t k) {
  const int64_t n = probabilities.dim(0), classes = probabilities.dim(1);
  std::vector<std::string> out;
  out.reserve(static_cast<size_t>(n * k));
  std::vector<int64_t> order(static_cast<size_t>(classes));
  for (int64_t i = 0; i < n; ++i) {
    const float* row = probabilities.data() + i * classes;
    for (int64_t c = 0; c < classes; ++c) order[c] = c;
    std::stable_sort(order.begin(), order.end(), [row](int64_t a, int64_t b) { return row[a] > row[b]; });
    for (int64_t j = 0; j < k; ++j)
      out.push_back(fmt::format("{}:{}:{}", row[order[j]], order[j], kClassLabels[order[j]]));
  }
  return out;
}

// An output as the request asks for it, its parameters read and checked once.
struct OutputPlan {
  std::string name, where;                // where: "output 'NAME'", for messages
  int64_t classification = 0;             // the classification extension's k; 0: the tensor itself
  std::optional<SharedMemoryRef> region;  // written there instead of sent
};

OutputPlan plan_output(const OutputRequest& o, const SharedMemoryRegistry& shared_memory) {
  OutputPlan plan{o.name, fmt::format("output '{}'", o.name), 0, std::nullopt};
  static constexpr std::string_view kOutputParameters[] = {"classification", "shared_memory_region",
                                                           "shared_memory_byte_size", "shared_memory_offset"};
  refuse_unknown_parameters(o.parameters, kOutputParameters, plan.where);
  plan.region = shared_memory_ref(o.parameters, plan.where);
  if (plan.region)  // refused now, not after computing
    shared_memory.check(plan.region->region, plan.region->offset, plan.region->byte_size, plan.where);
  const int64_t k = integer_parameter(o.parameters, "classification", plan.where).value_or(0);
  constexpr int64_t kClasses = std::size(kClassLabels);
  if (k != 0 && o.name != kProbabilitiesTensor)
    throw invalid(fmt::format("parameter 'classification' applies to output 'probabilities', not '{}'", o.name));
  if (k < 0 || k > kClasses)
    throw invalid(fmt::format("parameter 'classification' of {} is {}; the model has {} classes ({}), so 1..{}",
                              plan.where, k, kClasses, fmt::join(kClassLabels, ", "), kClasses));
  plan.classification = k;
  return plan;
}

}  // namespace

std::vector<OutputTensor> InferenceService::infer(const std::string& model, const std::string& version,
                                                  const InputTensor& input, const std::vector<std::string>& outputs,
                                                  const std::function<bool()>& cancelled) {
  InferRequest r{model, version, {}, input, {}};
  for (const std::string& name : outputs) r.outputs.push_back({name, {}});
  return infer(r, cancelled);
}

std::vector<OutputTensor> InferenceService::infer(const InferRequest& request,
                                                  const std::function<bool()>& client_cancelled) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const InputTensor& in = request.input;
  const std::string& model = request.model;
  check_model(model, request.version);
  if (!ready()) throw RequestError(RequestError::Kind::unavailable, "the server is shutting down");

  // triton_enable_empty_final_response asks a decoupled model for an empty last response; toptag's
  // model is not decoupled, so it changes nothing (Triton ignores it there too).
  static constexpr std::string_view kRequestParameters[] = {"timeout", "priority",
                                                            "triton_enable_empty_final_response"};
  refuse_unknown_parameters(request.parameters, kRequestParameters, "the request");
  if (integer_parameter(request.parameters, "priority", "the request").value_or(0) != 0)
    throw invalid("parameter 'priority' of the request must be 0: toptag serve's queue has one priority level");
  const int64_t timeout_us = integer_parameter(request.parameters, "timeout", "the request").value_or(0);
  if (timeout_us < 0)
    throw invalid(fmt::format("parameter 'timeout' of the request is {} us; must be >= 0", timeout_us));
  // Beyond a year the timeout is no deadline (and start + timeout cannot overflow).
  constexpr int64_t kYearUs = int64_t{365} * 24 * 3600 * 1000000;
  const auto deadline =
      timeout_us > 0 && timeout_us < kYearUs ? start + std::chrono::microseconds(timeout_us) : Clock::time_point::max();
  const std::function<bool()> cancelled = [&] {
    return (client_cancelled && client_cancelled()) || Clock::now() > deadline;
  };
  const std::string input_where = fmt::format("input '{}'", clip(in.name));
  refuse_unknown_parameters(in.parameters, kSharedMemoryParameters, input_where);
  const std::optional<SharedMemoryRef> input_region = shared_memory_ref(in.parameters, input_where);
  if (input_region && !in.values.empty())
    throw invalid(fmt::format("{} is in shared-memory region '{}' and in the request too: send it once", input_where,
                              clip(input_region->region)));

  std::vector<OutputPlan> outputs;
  bool want_features = false, want_probabilities = false;
  for (const OutputRequest& o : request.outputs) {
    bool& wanted = o.name == kFeaturesTensor ? want_features : want_probabilities;
    if (o.name != kFeaturesTensor && o.name != kProbabilitiesTensor)
      throw invalid(fmt::format("unknown output '{}' (probabilities, features)", clip(o.name)));
    if (wanted) throw invalid(fmt::format("output '{}' is requested twice", o.name));  // each copy would cost memory
    wanted = true;
    outputs.push_back(plan_output(o, shared_memory_));
  }
  if (outputs.empty()) {
    outputs.push_back({kProbabilitiesTensor, "output 'probabilities'", 0, std::nullopt});
    want_probabilities = true;
  }
  if (in.datatype != "FP32")
    throw invalid(fmt::format("input '{}' has datatype '{}'; expected FP32", clip(in.name), clip(in.datatype)));
  for (int64_t d : in.shape)
    if (d < 0)
      throw invalid(
          fmt::format("input '{}' has a negative dimension in shape {}", clip(in.name), shape_text(in.shape)));
  const std::string shape = shape_text(in.shape);
  Tensor images;
  const ImageOptions& o = engine_.image_options();
  if (in.name == kImagesTensor) {
    if (in.shape.size() != 4 || in.shape[1] != o.channels || in.shape[2] != o.size || in.shape[3] != o.size)
      throw invalid(
          fmt::format("input 'images' must have shape [-1,{},{},{}], got {}", o.channels, o.size, o.size, shape));
  } else if (in.name == kConstituentsTensor) {
    if (in.shape.size() != 3 || in.shape[1] != kMaxConstituents || in.shape[2] != 4)
      throw invalid(fmt::format("input 'constituents' must have shape [-1,{},4], got {}", kMaxConstituents, shape));
  } else {
    throw invalid(fmt::format("unknown input '{}' (images, constituents)", clip(in.name)));
  }
  const int64_t n = in.shape[0];
  if (n == 0) throw invalid("empty batch: the first dimension of the input is 0");
  if (n > limits_.max_request_jets)
    throw invalid(fmt::format("{} jets in one request exceed the server's limit of {}", n, limits_.max_request_jets));
  if (n * o.pixels() * 4 > limits_.max_request_image_bytes)  // bounded: n, C, H, W are all limited
    throw invalid(fmt::format("{} jets of {}x{}x{} images make {} MB, over the server's limit of {} MB per request", n,
                              o.channels, o.size, o.size, n * o.pixels() * 4 >> 20,
                              limits_.max_request_image_bytes >> 20));
  int64_t count = 1;  // bounded now: every dimension but the first is fixed, the first is limited
  for (int64_t d : in.shape) count *= d;
  std::span<const float> values = in.values;
  std::vector<float> from_region;
  if (input_region) {
    if (input_region->byte_size != static_cast<uint64_t>(count) * 4)
      throw invalid(fmt::format("{} of shape {} is {} bytes; its shared_memory_byte_size is {}", input_where, shape,
                                count * 4, input_region->byte_size));
    from_region.resize(static_cast<size_t>(count));
    shared_memory_.read(input_region->region, input_region->offset, input_region->byte_size, from_region.data(),
                        input_where);
    values = from_region;
  }
  if (static_cast<int64_t>(values.size()) != count)
    throw invalid(fmt::format("input '{}' of shape {} needs {} values ({} bytes), got {}", clip(in.name), shape, count,
                              count * 4, values.size()));
  if (!all_finite(values)) throw invalid(fmt::format("input '{}' holds NaN or inf", clip(in.name)));
  if (in.name == kImagesTensor) {
    images = Tensor::from(Shape{n, o.channels, o.size, o.size}, values);
  } else {
    images = engine_.images_from_constituents(values, n, kMaxConstituents);
  }
  const auto timed_out = [&] {
    return RequestError(RequestError::Kind::timeout,
                        fmt::format("the request's timeout of {} us passed before its answer was ready", timeout_us));
  };
  EngineResult r;
  try {
    r = run(std::move(images), want_features, cancelled);
  } catch (const RequestError& e) {
    if (e.kind() == RequestError::Kind::cancelled && !(client_cancelled && client_cancelled())) throw timed_out();
    throw;
  }
  if (Clock::now() > deadline) throw timed_out();
  const int64_t bad_features = r.first_non_finite_features, bad_scores = first_non_finite_row(r.probabilities);
  if (bad_features >= 0 || bad_scores >= 0)
    throw RequestError(RequestError::Kind::internal,
                       fmt::format("model '{}' gives NaN or inf {} for jet {} of the request (its weights or "
                                   "number format overflow on this input)",
                                   model_name_, bad_features >= 0 ? "features" : "probabilities",
                                   bad_features >= 0 ? bad_features : bad_scores));
  std::vector<OutputTensor> out;
  for (const OutputPlan& o : outputs) {
    if (o.classification > 0)
      out.push_back({o.name, {}, classify(r.probabilities, o.classification), o.classification, {}, 0});
    else
      out.push_back({o.name, o.name == kFeaturesTensor ? r.features : r.probabilities, {}, 0, {}, 0});
    if (const std::optional<SharedMemoryRef>& ref = o.region) {
      // A client that has given up may already have sent its next request through the same region.
      if (client_cancelled && client_cancelled())
        throw RequestError(RequestError::Kind::cancelled, "the client cancelled the request or its deadline passed");
      std::string bytes;
      out.back().append_raw(bytes);
      if (bytes.size() > ref->byte_size)
        throw invalid(fmt::format("{} is {} bytes, more than its shared_memory_byte_size {}", o.where, bytes.size(),
                                  ref->byte_size));
      shared_memory_.write(ref->region, ref->offset, bytes.data(), bytes.size(), o.where);
      out.back().shared_memory_region = ref->region;
      out.back().shared_memory_byte_size = bytes.size();
    }
  }
  metrics_.count_success(n, r, Clock::now() - start);
  return out;
}

}  // namespace toptag
