// The KServe v2 REST API of toptag serve as a pure function: one parsed HTTP request in, one reply
// out, no sockets. The listener (serve/http_listener.h) reads and bounds the bytes; this file gives
// them meaning. Any bytes at all give a reply: 4xx with {"error": "..."} for a bad request, 5xx only
// for a fault of the server or its model. Kept apart from the socket code so that the fuzzer
// (fuzz/fuzz_http.cpp) drives exactly what the server runs.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "serve/service.h"

namespace toptag {

struct HttpRequest {
  std::string method, target;  // target: the path with an optional ?query, percent-encoded
  std::string binary_header;   // the Inference-Header-Content-Length header ("" when absent)
  std::string body;
  std::function<bool()> cancelled;  // the client has gone (may be empty)
};

struct HttpReply {
  int status = 200;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

// Triton's binary tensor extension: the JSON part of a body is this many bytes, raw tensors follow.
inline constexpr const char* kBinaryHeader = "Inference-Header-Content-Length";
// Deeper JSON is refused before it is built: no request can make the parser or printer recurse far.
inline constexpr int kMaxJsonDepth = 16;
// The JSON part of a request, at most (its tree takes about 10x the text).
inline constexpr size_t kMaxJsonBytes = size_t{8} << 20;

// GET /v2, /v2/health/{live,ready}, /v2/models/NAME[/versions/V][/ready|/config|/stats],
// /v2/models/stats; POST /v2/models/NAME[/versions/V]/infer. A HEAD is answered as its GET (the
// listener sends the reply without its body).
HttpReply answer_http(InferenceService& service, const HttpRequest& request);

// {"error": message}, with invalid UTF-8 in the message replaced (never throws).
HttpReply http_error(int status, const std::string& message);

// The HTTP status of a refused request.
int http_status(RequestError::Kind kind);

}  // namespace toptag
