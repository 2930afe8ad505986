// The gRPC listener (kept apart so that the service core never sees the generated protobuf code).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "serve/service.h"

namespace inference {
class ModelInferRequest;
class ModelInferResponse;
}  // namespace inference

namespace toptag {

// ModelInfer without the transport (so that the fuzzer drives exactly what the server runs): checks
// the request, runs it, fills the response. Throws RequestError for any request it refuses.
void answer_grpc_infer(InferenceService& service, const inference::ModelInferRequest& request,
                       inference::ModelInferResponse& response, const std::function<bool()>& cancelled = {});

class GrpcFrontEnd {
 public:
  // At most max_threads calls are handled at once; more get RESOURCE_EXHAUSTED from gRPC itself.
  GrpcFrontEnd(InferenceService& service, const std::string& host, int port, int64_t max_message_bytes,
               int max_threads);
  ~GrpcFrontEnd();
  int port() const { return port_; }
  void shutdown();  // stop accepting, finish in-flight calls

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace toptag
