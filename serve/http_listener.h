// A bounded HTTP/1.1 listener on Boost.Beast, for the inference and metrics endpoints. Every
// resource a client can make it hold has a limit:
//   - header bytes (431 beyond), body bytes, chunked or not (413 beyond, at once for a declared length);
//   - body bytes held by all connections together (503 beyond: retry later), counted as they arrive,
//     not as a header announces them: a client that announces 64 MB and sends nothing holds nothing.
//     What is charged is the buffer holding them, which doubles as it fills: at most twice the bytes
//     received (and 1.5 times a body's length while the last doubling copies it);
//   - time: a header must arrive within the idle timeout, a body within the read timeout, and a body
//     from which no byte arrives for the stall timeout is dropped then;
//   - threads: a fixed pool runs the handlers; connections beyond max_connections are closed at once.
// The handler gets a parsed request and returns the reply; it may block (inference), holding one
// thread of the pool. A reply to HEAD is sent without its body.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "serve/http_api.h"

namespace toptag {

struct HttpLimits {
  int64_t max_body_bytes = 64 << 20;
  int64_t max_header_bytes = 16 << 10;
  int64_t max_body_bytes_in_flight = 512 << 20;  // all connections together
  int max_connections = 1024;
  int threads = 64;                       // handlers running at once
  std::chrono::seconds idle_timeout{5};   // a request's whole header, from when the connection awaits it
  std::chrono::seconds read_timeout{60};  // a request's whole body, from the end of its header
  std::chrono::seconds stall_timeout{5};  // a body from which no byte arrives
};

class HttpListener {
 public:
  using Handler = std::function<HttpReply(const HttpRequest&)>;
  // Binds host:port (0: any free port); `what` names the listener in errors. Serving starts with start().
  HttpListener(const std::string& host, int port, Handler handler, const HttpLimits& limits, const char* what);
  ~HttpListener();
  HttpListener(const HttpListener&) = delete;
  HttpListener& operator=(const HttpListener&) = delete;

  int port() const;
  // The bytes that request bodies hold now, over all connections (at most max_body_bytes_in_flight).
  int64_t body_bytes_held() const;
  void start();
  // Stops accepting, lets requests being handled finish and their replies go out (up to 30 s),
  // then closes every connection. Idempotent.
  void stop();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace toptag
