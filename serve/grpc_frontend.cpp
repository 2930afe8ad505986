// The gRPC front end: KServe v2 GRPCInferenceService on top of InferenceService.
#include "serve/grpc_frontend.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "inference.grpc.pb.h"
#include "serve/extensions.h"

namespace toptag {

namespace {

grpc::Status to_status(const RequestError& e) {
  switch (e.kind()) {
    case RequestError::Kind::not_found:
      return {grpc::StatusCode::NOT_FOUND, e.what()};
    case RequestError::Kind::unavailable:
      return {grpc::StatusCode::UNAVAILABLE, e.what()};
    case RequestError::Kind::exhausted:
      return {grpc::StatusCode::RESOURCE_EXHAUSTED, e.what()};
    case RequestError::Kind::cancelled:
      return {grpc::StatusCode::CANCELLED, e.what()};
    case RequestError::Kind::timeout:
      return {grpc::StatusCode::DEADLINE_EXCEEDED, e.what()};
    case RequestError::Kind::internal:
      return {grpc::StatusCode::INTERNAL, e.what()};
    case RequestError::Kind::invalid:
      break;
  }
  return {grpc::StatusCode::INVALID_ARGUMENT, e.what()};
}

// Runs a handler that only describes the model (its configuration, its statistics), mapping what it
// throws to a status: a refused request to its code, anything else to INTERNAL.
template <class Answer>
grpc::Status describe(const Answer& answer) {
  try {
    answer();
  } catch (const RequestError& e) {
    return to_status(e);
  } catch (const std::exception& e) {
    return {grpc::StatusCode::INTERNAL, e.what()};
  }
  return grpc::Status::OK;
}

void fill_metadata(const TensorMetadata& t, inference::ModelMetadataResponse::TensorMetadata* out) {
  out->set_name(t.name);
  out->set_datatype(t.datatype);
  for (int64_t d : t.shape) out->add_shape(d);
}

// A request's, input's or output's parameters, as the service reads them.
Parameters parameters(const google::protobuf::Map<std::string, inference::InferParameter>& map,
                      const std::string& where) {
  Parameters out;
  for (const auto& [key, p] : map) {
    switch (p.parameter_choice_case()) {
      case inference::InferParameter::kBoolParam:
        out[key] = p.bool_param();
        break;
      case inference::InferParameter::kInt64Param:
        out[key] = p.int64_param();
        break;
      case inference::InferParameter::kUint64Param:
        if (p.uint64_param() > static_cast<uint64_t>(INT64_MAX))
          throw invalid(fmt::format("parameter '{}' of {} is too large", clip(key), where));
        out[key] = static_cast<int64_t>(p.uint64_param());
        break;
      case inference::InferParameter::kDoubleParam:
        out[key] = p.double_param();
        break;
      case inference::InferParameter::kStringParam:
        out[key] = p.string_param();
        break;
      case inference::InferParameter::PARAMETER_CHOICE_NOT_SET:
        throw invalid(fmt::format("parameter '{}' of {} has no value", clip(key), where));
    }
  }
  return out;
}

}  // namespace

void answer_grpc_infer(InferenceService& s, const inference::ModelInferRequest& q, inference::ModelInferResponse& r,
                       const std::function<bool()>& cancelled) {
  if (q.inputs_size() != 1)
    throw invalid(fmt::format("expected exactly one input (images or constituents), got {}", q.inputs_size()));
  const auto& in = q.inputs(0);
  InferRequest request{q.model_name(), q.model_version(), parameters(q.parameters(), "the request"), {}, {}};
  // HTTP's binary_data_output: gRPC answers are always raw, so it changes nothing here.
  request.parameters.erase("binary_data_output");
  InputTensor& t = request.input;
  t = {in.name(),
       in.datatype(),
       {in.shape().begin(), in.shape().end()},
       {},
       parameters(in.parameters(), fmt::format("input '{}'", clip(in.name())))};
  std::vector<float> aligned;
  if (q.raw_input_contents_size() > 1)
    throw invalid(fmt::format("{} raw_input_contents for one input", q.raw_input_contents_size()));
  if (q.raw_input_contents_size() == 1) {
    if (in.has_contents()) throw invalid("input has both raw_input_contents and typed contents");
    const std::string& raw = q.raw_input_contents(0);
    if (raw.size() % 4 != 0)
      throw invalid(
          fmt::format("raw contents of '{}' are {} bytes, not a whole number of FP32 values", in.name(), raw.size()));
    aligned.resize(raw.size() / 4);
    if (!raw.empty())  // little-endian FP32, as on every supported host
      std::memcpy(aligned.data(), raw.data(), raw.size());
    t.values = aligned;
  } else {
    t.values = {in.contents().fp32_contents().data(), static_cast<size_t>(in.contents().fp32_contents_size())};
  }
  for (const auto& o : q.outputs())
    request.outputs.push_back({o.name(), parameters(o.parameters(), fmt::format("output '{}'", clip(o.name())))});
  const std::vector<OutputTensor> outputs = s.infer(request, cancelled);
  r.set_model_name(s.model_name());
  r.set_model_version(kModelVersion);
  r.set_id(q.id());
  for (const OutputTensor& v : outputs) {
    auto* o = r.add_outputs();
    o->set_name(v.name);
    o->set_datatype(v.datatype());
    for (int64_t d : v.shape()) o->add_shape(d);
    std::string* raw = r.add_raw_output_contents();  // empty for one in shared memory: indices stay aligned
    if (!v.shared_memory_region.empty()) {
      (*o->mutable_parameters())["shared_memory_region"].set_string_param(v.shared_memory_region);
      (*o->mutable_parameters())["shared_memory_byte_size"].set_int64_param(
          static_cast<int64_t>(v.shared_memory_byte_size));
    } else {
      v.append_raw(*raw);
    }
  }
}

namespace {

class Service final : public inference::GRPCInferenceService::Service {
 public:
  Service(InferenceService& s, int max_streams) : s_(s), max_streams_(max_streams) {}

  grpc::Status ServerLive(grpc::ServerContext*, const inference::ServerLiveRequest*,
                          inference::ServerLiveResponse* r) override {
    r->set_live(true);
    return grpc::Status::OK;
  }
  grpc::Status ServerReady(grpc::ServerContext*, const inference::ServerReadyRequest*,
                           inference::ServerReadyResponse* r) override {
    r->set_ready(s_.ready());
    return grpc::Status::OK;
  }
  grpc::Status ModelReady(grpc::ServerContext*, const inference::ModelReadyRequest* q,
                          inference::ModelReadyResponse* r) override {
    try {
      s_.check_model(q->name(), q->version());
      r->set_ready(s_.ready());
    } catch (const RequestError& e) {
      return to_status(e);
    }
    return grpc::Status::OK;
  }
  grpc::Status ServerMetadata(grpc::ServerContext*, const inference::ServerMetadataRequest*,
                              inference::ServerMetadataResponse* r) override {
    r->set_name("toptag");
    r->set_version(TOPTAG_VERSION);
    for (const std::string& extension : s_.extensions()) r->add_extensions(extension);
    return grpc::Status::OK;
  }
  grpc::Status ModelMetadata(grpc::ServerContext*, const inference::ModelMetadataRequest* q,
                             inference::ModelMetadataResponse* r) override {
    try {
      s_.check_model(q->name(), q->version());
    } catch (const RequestError& e) {
      return to_status(e);
    }
    r->set_name(s_.model_name());
    r->add_versions(kModelVersion);
    r->set_platform(s_.platform());
    for (const TensorMetadata& t : s_.inputs()) fill_metadata(t, r->add_inputs());
    for (const TensorMetadata& t : s_.outputs()) fill_metadata(t, r->add_outputs());
    return grpc::Status::OK;
  }

  grpc::Status SystemSharedMemoryStatus(grpc::ServerContext*, const inference::SystemSharedMemoryStatusRequest* q,
                                        inference::SystemSharedMemoryStatusResponse* r) override {
    return describe([&] {
      for (const SharedMemoryRegionStatus& region : s_.shared_memory().status(q->name())) {
        auto& out = (*r->mutable_regions())[region.name];
        out.set_name(region.name);
        out.set_key(region.key);
        out.set_offset(region.offset);
        out.set_byte_size(region.byte_size);
      }
    });
  }
  grpc::Status SystemSharedMemoryRegister(grpc::ServerContext*, const inference::SystemSharedMemoryRegisterRequest* q,
                                          inference::SystemSharedMemoryRegisterResponse*) override {
    return describe([&] { s_.register_shared_memory(q->name(), q->key(), q->offset(), q->byte_size()); });
  }
  grpc::Status SystemSharedMemoryUnregister(grpc::ServerContext*,
                                            const inference::SystemSharedMemoryUnregisterRequest* q,
                                            inference::SystemSharedMemoryUnregisterResponse*) override {
    return describe([&] { s_.shared_memory().unregister(q->name()); });
  }

  grpc::Status ModelConfig(grpc::ServerContext*, const inference::ModelConfigRequest* q,
                           inference::ModelConfigResponse* r) override {
    return describe([&] { *r->mutable_config() = model_config(s_, q->name(), q->version()); });
  }

  grpc::Status ModelStatistics(grpc::ServerContext*, const inference::ModelStatisticsRequest* q,
                               inference::ModelStatisticsResponse* r) override {
    return describe([&] { *r = model_statistics(s_, q->name(), q->version()); });
  }

  grpc::Status ModelInfer(grpc::ServerContext* context, const inference::ModelInferRequest* q,
                          inference::ModelInferResponse* r) override {
    return answer(*q, *r, context);
  }

  // The requests of one stream are answered one after another, in order, as Triton answers a
  // non-decoupled model's: a refused one gets its error message in the stream, which stays open.
  // Concurrency comes from several streams (perf_analyzer --streaming opens one per concurrent
  // client), whose requests the engine batches together as it batches ModelInfer calls.
  grpc::Status ModelStreamInfer(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<inference::ModelStreamInferResponse, inference::ModelInferRequest>* stream) override {
    // A stream holds one of the sync server's threads while it is open: at most half of them, so
    // that open streams never starve the other calls (health, ModelInfer).
    if (open_streams_.fetch_add(1) >= max_streams_) {
      --open_streams_;
      return {grpc::StatusCode::RESOURCE_EXHAUSTED,
              fmt::format("{} streams are open, the most this server holds at once; retry later", max_streams_)};
    }
    struct Close {
      std::atomic<int>& n;
      ~Close() { --n; }
    } close{open_streams_};
    inference::ModelInferRequest q;
    while (stream->Read(&q)) {
      inference::ModelStreamInferResponse r;
      const grpc::Status status = answer(q, *r.mutable_infer_response(), context);
      if (!status.ok()) {  // the error, and the request's id so that the client knows which one failed
        r.clear_infer_response();
        r.mutable_infer_response()->set_id(q.id());
        r.set_error_message(status.error_message());
      }
      if (!stream->Write(r)) break;  // the client is gone
    }
    return grpc::Status::OK;
  }

 private:
  // One inference request, answered into `r` or refused with a status; failures are counted.
  grpc::Status answer(const inference::ModelInferRequest& q, inference::ModelInferResponse& r,
                      grpc::ServerContext* context) {
    const auto start = std::chrono::steady_clock::now();
    try {
      answer_grpc_infer(s_, q, r, [context] { return context->IsCancelled(); });
    } catch (const RequestError& e) {
      // A request for another model never reached this one: Triton counts it nowhere.
      if (e.kind() != RequestError::Kind::not_found)
        s_.metrics().count_failure(e.kind(), std::chrono::steady_clock::now() - start);
      return to_status(e);
    } catch (const std::exception& e) {
      s_.metrics().count_failure(RequestError::Kind::internal, std::chrono::steady_clock::now() - start);
      return {grpc::StatusCode::INTERNAL, e.what()};
    }
    return grpc::Status::OK;
  }

  InferenceService& s_;
  const int max_streams_;
  std::atomic<int> open_streams_{0};
};

}  // namespace

struct GrpcFrontEnd::Impl {
  std::unique_ptr<Service> service;
  std::unique_ptr<grpc::Server> server;
};

GrpcFrontEnd::GrpcFrontEnd(InferenceService& service, const std::string& host, int port, int64_t max_message_bytes,
                           int max_threads)
    : impl_(std::make_unique<Impl>()) {
  impl_->service = std::make_unique<Service>(service, std::max(1, max_threads / 2));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(fmt::format("{}:{}", host, port), grpc::InsecureServerCredentials(), &port_);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a port in use is an error, not shared
  builder.SetMaxReceiveMessageSize(static_cast<int>(max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(max_message_bytes));
  grpc::ResourceQuota quota("toptag-serve");
  quota.SetMaxThreads(max_threads);  // the sync server's threads: calls beyond get RESOURCE_EXHAUSTED
  builder.SetResourceQuota(quota);
  // A thread that has answered a call stays to poll for the next one, up to half the threads: with
  // gRPC's default of 2 pollers, 16 one-jet clients made it start and end a thread for most calls,
  // and served throughput rose 8-11% (bench/served_throughput.sh) without that churn.
  using Option = grpc::ServerBuilder::SyncServerOption;
  builder.SetSyncServerOption(Option::MIN_POLLERS, std::min(4, max_threads));
  builder.SetSyncServerOption(Option::MAX_POLLERS, std::max(std::min(4, max_threads), max_threads / 2));
  builder.RegisterService(impl_->service.get());
  impl_->server = builder.BuildAndStart();
  if (!impl_->server || port_ == 0) fail("cannot listen for gRPC on {}:{} (port in use?)", host, port);
}

GrpcFrontEnd::~GrpcFrontEnd() {
  shutdown();
}

void GrpcFrontEnd::shutdown() {
  if (impl_->server) {
    // Stop accepting; in-flight calls get up to 30 s to finish.
    impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(30));
    impl_->server->Wait();
    impl_->server.reset();
  }
}

}  // namespace toptag
