// libFuzzer target: any bytes as a KServe v2 REST request, sent one of two ways (bit 0x40 of byte 0).
// - Into the server's handler (serve/http_api), the code the HTTP listener runs for every parsed
//   request. Byte 0 picks the method and path (bit 0x80 of byte 2 too: the paths of Triton's
//   configuration, statistics and shared-memory extensions) and whether the binary extension header
//   is sent (its value from bytes 1-2); the rest is the body.
// - Over loopback into an HTTP listener (serve/http_listener) with small limits, so that its body
//   accounting is driven: bodies over the all-connection budget, over the per-request limit, cut
//   short, chunked, after 100-continue, then a second request on the same connection. Byte 0 picks
//   the path and method as above, and bit 0x10 sends the bytes after byte 2 as they are; byte 1 the
//   framing and options (see request_bytes), byte 2 the chunk size; the rest is the body. A request
//   cut short is followed by the client half-closing the connection.
// Every input must give replies with a JSON error or a result: no crash, no sanitizer report. Through
// the listener the replies must parse one after another (no body after HEAD), and once the
// connection is gone the listener must hold no body bytes.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "fuzz/fuzz_common.h"
#include "serve/http_api.h"
#include "serve/http_listener.h"

namespace {

using namespace toptag;

// The first eight go through the listener too; the handler is also sent the rest.
const char* const kTargets[] = {"/v2/models/toptag/infer",
                                "/v2/models/toptag/versions/1/infer",
                                "/v2/models/toptag",
                                "/v2/models/toptag/ready",
                                "/v2/health/ready",
                                "/v2/models/to%ptag/infer?x=1",
                                "/v2/models//infer",
                                "/v2",
                                "/v2/models/toptag/config",
                                "/v2/models/toptag/versions/1/config",
                                "/v2/models/toptag/stats",
                                "/v2/models/toptag/versions/1/stats",
                                "/v2/models/stats",
                                "/v2/models/toptag/versions/7/config",
                                "/v2/systemsharedmemory/status",
                                "/v2/systemsharedmemory/region/r/register"};

void check_reply(int status, const std::string& body) {
  if (status < 200 || status > 599) __builtin_trap();
  if (status != 200 && !nlohmann::json::accept(body)) __builtin_trap();  // errors are JSON
}

void answer_directly(const uint8_t* data, size_t size) {
  HttpRequest req;
  req.method = data[0] & 0x80 ? "GET" : "POST";
  req.target = kTargets[(data[0] & 7) | (data[2] & 0x80 ? 8 : 0)];
  if (data[0] & 0x08) req.binary_header = std::to_string(data[1] | (data[2] << 8));
  if (data[0] & 0x10) req.binary_header = std::string(reinterpret_cast<const char*>(data + 1), 2);
  if (data[0] & 0x20) req.target += std::string(reinterpret_cast<const char*>(data + 1), 2);  // odd bytes in the path
  req.body.assign(reinterpret_cast<const char*>(data + 3), size - 3);
  const HttpReply reply = answer_http(fuzz::tiny_service(), req);
  check_reply(reply.status, reply.body);
}

// Limits small enough for short inputs to reach: a body up to `max_body` bytes, `budget` bytes held
// over all connections (a body beyond it gets 503 as its bytes arrive), short timeouts.
HttpListener* make_listener(int64_t max_body, int64_t budget) {
  HttpLimits limits;
  limits.max_body_bytes = max_body;
  limits.max_body_bytes_in_flight = budget;
  limits.max_header_bytes = 2048;
  limits.threads = 2;
  limits.idle_timeout = limits.stall_timeout = std::chrono::seconds(2);
  limits.read_timeout = std::chrono::seconds(4);
  auto* l = new HttpListener(
      "127.0.0.1", 0, [](const HttpRequest& r) { return answer_http(fuzz::tiny_service(), r); }, limits, "fuzz");
  l->start();
  return l;  // lives as long as the process, as tiny_service
}

// One refuses bodies over 8 kB (413) and holds 3 kB in all (503 first); the other the reverse.
HttpListener& listener(bool budget_first) {
  static HttpListener* const budget_bound = make_listener(8192, 3000);
  static HttpListener* const size_bound = make_listener(2048, 8192);
  return budget_first ? *budget_bound : *size_bound;
}

// The request bytes. Byte 1: bits 0-1 the framing (0: Content-Length, 1: a Content-Length beyond
// the bytes sent, 2: chunked, 3: chunked without its last chunk), 0x04 HEAD, 0x08 a second request
// after it on the same connection, 0x10 Expect: 100-continue, 0x20 the binary extension header,
// 0x40 the listener whose budget is below its body limit.
std::string request_bytes(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data + 3), size - 3);
  if (data[0] & 0x10) return body;
  const int framing = data[1] & 3;
  const size_t chunk = data[2] + 1u;
  const bool second = data[1] & 0x08;
  const char* method = data[0] & 0x80 ? "GET" : "POST";
  if (data[1] & 0x04) method = "HEAD";
  std::string r = fmt::format("{} {} HTTP/1.1\r\nHost: x\r\n", method, kTargets[data[0] & 7]);
  if (data[1] & 0x10) r += "Expect: 100-continue\r\n";
  if (data[1] & 0x20) r += fmt::format("{}: {}\r\n", kBinaryHeader, data[2]);
  if (framing < 2) r += fmt::format("Content-Length: {}\r\n", body.size() + (framing == 1 ? chunk : 0));
  if (framing >= 2) r += "Transfer-Encoding: chunked\r\n";
  r += second ? "\r\n" : "Connection: close\r\n\r\n";
  if (framing < 2) r += body;
  for (size_t at = 0; framing >= 2 && at < body.size(); at += chunk)
    r += fmt::format("{:x}\r\n{}\r\n", std::min(chunk, body.size() - at), body.substr(at, chunk));
  if (framing == 2) r += "0\r\n\r\n";
  if (second) r += "GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  return r;
}

// Sends `request`, half-closes the connection if asked, and returns all the listener answers
// before it closes. (A complete request is not half-closed: the listener would take it for a
// client gone and answer 499 without computing.) Every call is retried when a signal interrupts it:
// libFuzzer's timeout alarm (SIGALRM every timeout/2 + 1 seconds) lands in one now and then. An
// interrupted connect goes on in the kernel; calling it again waits for it, or says it is done.
std::string exchange(int port, const std::string& request, bool half_close) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) __builtin_trap();
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  while (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (errno == EISCONN) break;
    if (errno != EINTR && errno != EALREADY) __builtin_trap();
  }
  for (size_t sent = 0; sent < request.size();) {  // the listener may refuse and close before all is sent
    const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  if (half_close) ::shutdown(fd, SHUT_WR);
  std::string replies;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    replies.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return replies;
}

// Each reply must start where the one before ended: 1xx and replies to HEAD have no body. A reply
// cut short (the listener refused a body and reset the connection) ends the check.
void check_replies(const std::string& bytes, bool head) {
  for (size_t at = 0; at < bytes.size();) {
    const size_t end = bytes.find("\r\n\r\n", at);
    if (end == std::string::npos) return;
    const std::string top = bytes.substr(at, end - at);
    if (top.rfind("HTTP/1.1 ", 0) != 0 || top.size() < 12) __builtin_trap();
    const int status = std::stoi(top.substr(9, 3));
    const size_t length_at = top.find("Content-Length: ");
    const size_t length = length_at == std::string::npos ? 0 : std::stoul(top.substr(length_at + 16));
    at = end + 4;
    if (status < 200) continue;
    if (head) {
      head = false;  // the second request is a GET
      continue;
    }
    if (at + length > bytes.size()) return;
    check_reply(status, bytes.substr(at, length));
    at += length;
  }
}

void send_through_listener(const uint8_t* data, size_t size) {
  HttpListener& l = listener(data[1] & 0x40);
  const bool cut_short = (data[0] & 0x10) || (data[1] & 3) % 2 == 1;  // raw bytes may be
  const std::string replies = exchange(l.port(), request_bytes(data, size), cut_short);
  if (!(data[0] & 0x10))
    check_replies(replies, data[1] & 0x04);
  else if (!replies.empty() && replies.rfind("HTTP/1.1 ", 0) != 0)  // raw bytes may hold any requests
    __builtin_trap();
  // The connection is gone: every byte charged for its bodies must be given back.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (l.body_bytes_held() != 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (l.body_bytes_held() != 0) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  if (data[0] & 0x40)
    send_through_listener(data, size);
  else
    answer_directly(data, size);
  // Each input starts from the same regions: only the fuzz object's own.
  SharedMemoryRegistry& registry = fuzz::tiny_service().shared_memory();
  for (const SharedMemoryRegionStatus& r : registry.status(""))
    if (r.name != fuzz::kSharedMemoryRegion) registry.unregister(r.name);
  return 0;
}
