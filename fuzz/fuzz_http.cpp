// libFuzzer target: any bytes as a KServe v2 REST request into the server's handler (serve/http_api),
// the code the HTTP listener runs for every parsed request. Byte 0 picks the method and path and
// whether the binary extension header is sent (its value from bytes 1-2); the rest is the body.
// Every input must give a reply with a JSON error or a result: no crash, no sanitizer report.
#include <nlohmann/json.hpp>
#include <string>

#include "fuzz/fuzz_common.h"
#include "serve/http_api.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace toptag;
  if (size < 3) return 0;
  static const char* kTargets[] = {
      "/v2/models/toptag/infer", "/v2/models/toptag/versions/1/infer", "/v2/models/toptag", "/v2/models/toptag/ready",
      "/v2/health/ready",        "/v2/models/to%ptag/infer?x=1",       "/v2/models//infer", "/v2"};
  HttpRequest req;
  req.method = data[0] & 0x80 ? "GET" : "POST";
  req.target = kTargets[data[0] & 7];
  if (data[0] & 0x08) req.binary_header = std::to_string(data[1] | (data[2] << 8));
  if (data[0] & 0x10) req.binary_header = std::string(reinterpret_cast<const char*>(data + 1), 2);
  if (data[0] & 0x20) req.target += std::string(reinterpret_cast<const char*>(data + 1), 2);  // odd bytes in the path
  req.body.assign(reinterpret_cast<const char*>(data + 3), size - 3);
  const HttpReply reply = answer_http(fuzz::tiny_service(), req);
  if (reply.status < 200 || reply.status > 599) __builtin_trap();
  if (reply.status != 200 && !nlohmann::json::accept(reply.body)) __builtin_trap();  // errors are JSON
  return 0;
}
