// toptag serve: the batching engine behind three listeners, as Triton lays them out:
//   gRPC  (KServe v2 GRPCInferenceService)        --grpc-port, default 8001
//   HTTP  (KServe v2 REST, /v2/...)               --http-port, default 8000
//   HTTP  (Prometheus text at /metrics)           --metrics-port, default 8002
// Port 0 picks a free port (tests); a negative port disables that listener.
#pragma once

#include <memory>
#include <string>

#include "serve/service.h"

namespace toptag {

struct ServerOptions {
  std::string host = "0.0.0.0";
  int grpc_port = 8001, http_port = 8000, metrics_port = 8002;
  std::string model_name = kDefaultModelName;
  EngineOptions engine;
  ServiceLimits limits;
  int64_t max_message_bytes = 64 << 20;     // larger requests are refused with a clear message
  int64_t max_bytes_in_flight = 512 << 20;  // HTTP bodies held at once, over all connections
  int max_grpc_threads = 64;                // gRPC calls handled at once (more: RESOURCE_EXHAUSTED)
  int http_idle_timeout_s = 5;              // an HTTP connection silent this long is closed
  int http_read_timeout_s = 60;             // ... a request's body must arrive within this
  int http_stall_timeout_s = 5;             // ... and a body from which no byte arrives this long is dropped
};

class InferenceServer {
 public:
  InferenceServer(Tagger tagger, const ServerOptions& options);
  ~InferenceServer();

  // The ports actually bound (useful with port 0).
  int grpc_port() const { return grpc_port_; }
  int http_port() const { return http_port_; }
  int metrics_port() const { return metrics_port_; }
  InferenceService& service() { return *service_; }

  // Stops accepting, lets in-flight requests finish, stops the engine. Idempotent.
  void shutdown();

 private:
  ServerOptions options_;
  std::unique_ptr<BatchingEngine> engine_;
  std::unique_ptr<InferenceService> service_;
  std::unique_ptr<class GrpcFrontEnd> grpc_;
  std::unique_ptr<class HttpListener> http_, metrics_;
  int grpc_port_ = -1, http_port_ = -1, metrics_port_ = -1;
  bool stopped_ = false;
};

}  // namespace toptag
