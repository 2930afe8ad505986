// How toptag serve refuses a request: RequestError, whose kind the front ends map to a gRPC status
// and an HTTP code, and the helpers that word its messages.
#pragma once

#include <string>

#include "nn/check.h"

namespace toptag {

// A request the server refuses or cannot answer: the front ends map the kind to a gRPC status and an
// HTTP code:
//   invalid      400 INVALID_ARGUMENT     the request itself is wrong
//   not_found    404 NOT_FOUND            unknown model or version
//   unavailable  503 UNAVAILABLE          shutting down
//   exhausted    503 RESOURCE_EXHAUSTED   the queue is full (--max-queue): retry later
//   cancelled    499 CANCELLED            the client left, or its deadline passed, before the answer
//   timeout      504 DEADLINE_EXCEEDED    the request's own "timeout" parameter passed first
//   internal     500 INTERNAL             the model itself failed (NaN/inf outputs)
class RequestError : public Error {
 public:
  enum class Kind { invalid, not_found, unavailable, exhausted, cancelled, timeout, internal };

  RequestError(Kind kind, const std::string& message) : Error(message), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

inline RequestError invalid(const std::string& message) {
  return RequestError(RequestError::Kind::invalid, message);
}

// A client's string as echoed in an error message: at most 64 characters.
inline std::string clip(const std::string& text) {
  return text.size() <= 64 ? text : text.substr(0, 64) + "...";
}

}  // namespace toptag
