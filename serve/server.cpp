#include "serve/server.h"

#include "serve/grpc_frontend.h"
#include "serve/http_listener.h"

namespace toptag {

InferenceServer::InferenceServer(Tagger tagger, const ServerOptions& options) : options_(options) {
  engine_ = std::make_unique<BatchingEngine>(std::move(tagger), options.engine);
  service_ = std::make_unique<InferenceService>(*engine_, options.model_name, options.limits);
  if (options.grpc_port >= 0) {
    grpc_ = std::make_unique<GrpcFrontEnd>(*service_, options.host, options.grpc_port, options.max_message_bytes,
                                           options.max_grpc_threads);
    grpc_port_ = grpc_->port();
  }
  HttpLimits http_limits;
  http_limits.max_body_bytes = options.max_message_bytes;
  // A body is held in a buffer that doubles as it fills, the old and the new charged while one is
  // copied into the other: 1.5 times the largest body at its last step, so twice it always fits.
  http_limits.max_body_bytes_in_flight = std::max(2 * options.max_message_bytes, options.max_bytes_in_flight);
  http_limits.idle_timeout = std::chrono::seconds(options.http_idle_timeout_s);
  http_limits.read_timeout = std::chrono::seconds(options.http_read_timeout_s);
  http_limits.stall_timeout = std::chrono::seconds(options.http_stall_timeout_s);
  if (options.http_port >= 0) {
    http_ = std::make_unique<HttpListener>(
        options.host, options.http_port, [this](const HttpRequest& r) { return answer_http(*service_, r); },
        http_limits, "HTTP");
    http_port_ = http_->port();
  }
  if (options.metrics_port >= 0) {
    http_limits.threads = 2;
    metrics_ = std::make_unique<HttpListener>(
        options.host, options.metrics_port,
        [this](const HttpRequest& r) {
          if ((r.method != "GET" && r.method != "HEAD") || r.target.substr(0, r.target.find('?')) != "/metrics")
            return http_error(404, "the metrics are at GET /metrics");
          HttpReply reply;
          reply.content_type = "text/plain; version=0.0.4";
          reply.body = service_->metrics_text();
          return reply;
        },
        http_limits, "metrics");
    metrics_port_ = metrics_->port();
  }
  // Serving starts once every listener is bound, so a failure above leaves no thread to clean up.
  for (HttpListener* listener : {http_.get(), metrics_.get()})
    if (listener) listener->start();
}

InferenceServer::~InferenceServer() {
  shutdown();
}

void InferenceServer::shutdown() {
  if (stopped_) return;
  stopped_ = true;
  if (grpc_) grpc_->shutdown();  // waits for in-flight gRPC calls
  if (http_) http_->stop();      // stops accepting; requests being handled are answered
  if (metrics_) metrics_->stop();
  engine_->stop();
}

}  // namespace toptag
