// The gRPC listener (kept apart so that only one file sees the generated protobuf code).
#pragma once

#include <memory>
#include <string>

#include "serve/service.h"

namespace toptag {

class GrpcFrontEnd {
 public:
  GrpcFrontEnd(InferenceService& service, const std::string& host, int port, int64_t max_message_bytes);
  ~GrpcFrontEnd();
  int port() const { return port_; }
  void shutdown();  // stop accepting, finish in-flight calls

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace toptag
