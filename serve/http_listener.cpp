#include "serve/http_listener.h"

#include <sys/socket.h>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <optional>
#include <thread>
#include <vector>

#include "nn/check.h"

namespace toptag {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

// Member order matters: the io context is destroyed before the counters, and its destructor
// destroys the sessions still waiting on it, which update the counters.
struct HttpListener::Impl {
  Impl(const HttpLimits& l, Handler h)
      : limits(l), handler(std::move(h)), io(l.threads), acceptor(asio::make_strand(io)) {}

  HttpLimits limits;
  Handler handler;
  std::atomic<int> connections{0}, busy{0};  // open connections; requests being handled or answered
  std::atomic<int64_t> body_bytes{0};        // held by bodies being read or handled
  std::atomic<bool> stopping{false};
  bool started = false, stopped = false;
  asio::io_context io;
  tcp::acceptor acceptor;  // on a strand: accepting and closing never run at once
  std::vector<std::thread> threads;

  void accept();
};

namespace {

// A malformed request (Beast's HTTP parser refused it), as opposed to a socket error or a timeout.
bool is_parse_error(beast::error_code ec) {
  return ec && ec != http::error::end_of_stream &&
         ec.category() == http::make_error_code(http::error::bad_target).category();
}

// One connection's share of the bytes that all the listener's connections hold in request bodies.
class BodyCharge {
 public:
  BodyCharge(std::atomic<int64_t>& held, int64_t budget, int64_t max_body)
      : held_(held), budget_(budget), max_body_(max_body) {}
  ~BodyCharge() { release(); }
  BodyCharge(const BodyCharge&) = delete;
  BodyCharge& operator=(const BodyCharge&) = delete;

  // Adds `bytes` to this connection's share; false, adding nothing, when all connections together
  // would hold more than the budget.
  bool add(int64_t bytes) {
    if (held_.fetch_add(bytes) + bytes > budget_) {
      held_ -= bytes;
      return false;
    }
    charged_ += bytes;
    return true;
  }
  void remove(int64_t bytes) {
    held_ -= bytes;
    charged_ -= bytes;
  }
  void release() { remove(charged_); }
  int64_t max_body() const { return max_body_; }

 private:
  std::atomic<int64_t>& held_;
  const int64_t budget_, max_body_;
  int64_t charged_ = 0;
};

// Beast's string_body, except that the string's memory is charged to the connection's BodyCharge
// as the bytes arrive, before it is allocated, and never as the header announces it. The string
// doubles as it fills (so it holds at most twice the bytes received) up to the announced length,
// which a complete body then takes exactly.
struct ChargedBody {
  struct value_type {
    std::string bytes;
    BodyCharge* charge = nullptr;  // set before the body is read
  };

  class reader {
   public:
    template <bool isRequest, class Fields>
    reader(http::header<isRequest, Fields>&, value_type& body) : body_(body) {}

    void init(const boost::optional<uint64_t>& length, beast::error_code& ec) {
      // The parser refuses a body over its limit before the bytes reach put().
      const auto max_body = static_cast<uint64_t>(body_.charge->max_body());
      max_size_ = static_cast<size_t>(length ? std::min(*length, max_body) : max_body);
      ec = {};
    }

    template <class ConstBuffers>
    size_t put(const ConstBuffers& buffers, beast::error_code& ec) {
      const size_t extra = beast::buffer_bytes(buffers), size = body_.bytes.size();
      if (size + extra > body_.bytes.capacity() && !grow(size + extra)) {
        ec = boost::system::errc::make_error_code(boost::system::errc::not_enough_memory);
        return 0;
      }
      body_.bytes.resize(size + extra);
      asio::buffer_copy(asio::buffer(body_.bytes.data() + size, extra), buffers);
      ec = {};
      return extra;
    }

    void finish(beast::error_code& ec) { ec = {}; }

   private:
    // Moves the bytes to a string of twice the capacity (at least `need`, at most max_size_),
    // charged before it is allocated; false when the budget cannot hold it.
    bool grow(size_t need) {
      const size_t capacity = std::max(need, std::min(max_size_, 2 * charged_));
      if (!body_.charge->add(static_cast<int64_t>(capacity))) return false;
      std::string larger;
      larger.reserve(capacity);
      larger.append(body_.bytes);
      body_.bytes.swap(larger);
      body_.charge->remove(static_cast<int64_t>(charged_));  // the old string, freed with `larger`
      charged_ = capacity;
      return true;
    }

    value_type& body_;
    size_t max_size_ = 0;
    size_t charged_ = 0;  // the string's allocated capacity (0 while the bytes fit in the string itself)
  };
};

// One connection: read a request (bounded), hand it to the handler, write the reply, repeat while
// the client keeps the connection alive.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, HttpListener::Impl* owner)
      : stream_(std::move(socket)),
        buffer_(static_cast<size_t>(owner->limits.max_header_bytes) + 65536),
        owner_(owner),
        charge_(owner->body_bytes, owner->limits.max_body_bytes_in_flight, owner->limits.max_body_bytes) {
    ++owner_->connections;
  }
  ~Session() { --owner_->connections; }

  void start() { read_header(); }

 private:
  void read_header() {
    if (owner_->stopping) return close();
    parser_.emplace();
    parser_->get().body().charge = &charge_;
    head_ = false;
    parser_->header_limit(static_cast<uint32_t>(owner_->limits.max_header_bytes));
    parser_->body_limit(static_cast<uint64_t>(owner_->limits.max_body_bytes));
    stream_.expires_after(owner_->limits.idle_timeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
  }

  void on_header(beast::error_code ec) {
    if (ec == http::error::body_limit)  // a declared Content-Length over the limit
      return reply_and_close(http_error(
          413, fmt::format("the body exceeds the server's limit of {} bytes", owner_->limits.max_body_bytes)));
    if (ec == http::error::header_limit || ec == http::error::buffer_overflow)
      return reply_and_close(
          http_error(431, fmt::format("request headers exceed {} bytes", owner_->limits.max_header_bytes)));
    if (is_parse_error(ec)) return reply_and_close(http_error(400, "malformed HTTP request: " + ec.message()));
    if (ec) return close();  // the client left, went quiet, or the connection failed
    const auto& header = parser_->get();
    head_ = header.method() == http::verb::head;
    const boost::optional<uint64_t> length = parser_->content_length();
    const int64_t max_body = owner_->limits.max_body_bytes;
    if (length && *length > static_cast<uint64_t>(max_body))
      return reply_and_close(http_error(
          413, fmt::format("the body of {} bytes exceeds the server's limit of {} bytes", *length, max_body)));
    body_deadline_ = std::chrono::steady_clock::now() + owner_->limits.read_timeout;
    if (!parser_->is_done() && beast::iequals(header[http::field::expect], "100-continue")) {
      auto go_on = std::make_shared<http::response<http::empty_body>>(http::status::continue_, header.version());
      stream_.expires_after(owner_->limits.read_timeout);
      return http::async_write(stream_, *go_on, [self = shared_from_this(), go_on](beast::error_code e, size_t) {
        if (e) return self->close();
        self->parse_body();
      });
    }
    parse_body();
  }

  // Parses the bytes read so far; reads more while the body is incomplete.
  void parse_body() {
    beast::error_code ec;
    while (buffer_.size() > 0 && !parser_->is_done()) {
      const size_t used = parser_->put(buffer_.data(), ec);
      buffer_.consume(used);
      if (ec == http::error::need_more || (!ec && used == 0)) break;
      if (ec) return refuse_body(ec);
    }
    if (parser_->is_done()) return handle();
    read_body();
  }

  // One read, which must bring a byte within the stall timeout and leave the whole body within the
  // read timeout: a body that stops moving is dropped long before one that moves slowly.
  void read_body() {
    const std::chrono::steady_clock::duration left = body_deadline_ - std::chrono::steady_clock::now();
    stream_.expires_after(std::min<std::chrono::steady_clock::duration>(owner_->limits.stall_timeout, left));
    const size_t room = beast::read_size(buffer_, 65536);
    if (room == 0) return refuse_body(http::error::buffer_overflow);  // a chunk-size line longer than the buffer
    stream_.async_read_some(buffer_.prepare(room), [self = shared_from_this()](beast::error_code ec, size_t n) {
      self->buffer_.commit(n);
      if (ec) return self->close();  // the client left mid-body, stalled or ran out of time, or the connection failed
      self->parse_body();
    });
  }

  void refuse_body(beast::error_code ec) {
    if (ec == http::error::body_limit)
      return reply_and_close(http_error(
          413, fmt::format("the body exceeds the server's limit of {} bytes", owner_->limits.max_body_bytes)));
    if (ec == boost::system::errc::not_enough_memory)  // ChargedBody: the bytes received fill the budget
      return reply_and_close(http_error(503, "the server holds too many large requests now; retry later"));
    if (is_parse_error(ec)) return reply_and_close(http_error(400, "malformed HTTP request: " + ec.message()));
    close();
  }

  void handle() {
    http::request<ChargedBody> req = parser_->release();
    HttpRequest r;
    r.method = std::string(req.method_string());
    r.target = std::string(req.target());
    r.binary_header = std::string(req[kBinaryHeader]);
    r.body = std::move(req.body().bytes);
    const int fd = stream_.socket().native_handle();
    r.cancelled = [fd] {  // the peer closed its end: recv sees end of stream without consuming anything
      char c;
      const ssize_t n = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
      return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
    };
    ++owner_->busy;
    stream_.expires_never();  // the handler may take long (inference): the write gets its own timeout
    HttpReply reply;
    try {
      reply = owner_->handler(r);
    } catch (const std::exception& e) {
      reply = http_error(500, e.what());
    }
    charge_.release();
    write(std::move(reply), req.keep_alive() && !owner_->stopping);
  }

  void write(HttpReply reply, bool keep_alive) {  // ends a request counted in busy
    auto res = std::make_shared<http::response<http::string_body>>();
    res->result(static_cast<unsigned>(reply.status));
    res->version(11);
    res->set(http::field::server, "toptag");
    res->set(http::field::content_type, reply.content_type);
    for (const auto& [name, value] : reply.headers) res->set(name, value);
    res->body() = std::move(reply.body);
    res->keep_alive(keep_alive);
    res->prepare_payload();
    if (head_) res->body().clear();  // Content-Length stays the GET's (RFC 9110 9.3.2)
    stream_.expires_after(owner_->limits.read_timeout);
    http::async_write(stream_, *res, [self = shared_from_this(), res, keep_alive](beast::error_code ec, size_t) {
      --self->owner_->busy;
      if (ec || !keep_alive) return self->close();
      self->read_header();
    });
  }

  void reply_and_close(HttpReply reply) {
    ++owner_->busy;
    write(std::move(reply), false);
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
  }

  beast::tcp_stream stream_;
  // Capped: Beast 1.74 bounds neither chunk-size lines (extensions) nor trailers by header_limit;
  // bodies are moved out of the buffer as they are parsed, so the cap does not limit them.
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<ChargedBody>> parser_;
  HttpListener::Impl* owner_;
  BodyCharge charge_;  // the request's body, from its first byte until the handler returns
  std::chrono::steady_clock::time_point body_deadline_;
  bool head_ = false;  // the request is a HEAD: its reply goes without a body
};

}  // namespace

void HttpListener::Impl::accept() {
  acceptor.async_accept(asio::make_strand(io), [this](beast::error_code ec, tcp::socket socket) {
    if (!acceptor.is_open()) return;  // stopped
    if (ec) {                         // e.g. out of file descriptors: retry shortly rather than spin on the same error
      auto timer = std::make_shared<asio::steady_timer>(acceptor.get_executor(), std::chrono::milliseconds(50));
      timer->async_wait([this, timer](beast::error_code) {
        if (acceptor.is_open()) accept();
      });
      return;
    }
    if (connections.load() >= limits.max_connections)
      socket.close(ec);  // over the limit: refuse rather than queue without bound
    else
      std::make_shared<Session>(std::move(socket), this)->start();
    accept();
  });
}

HttpListener::HttpListener(const std::string& host, int port, Handler handler, const HttpLimits& limits,
                           const char* what)
    : impl_(std::make_unique<Impl>(limits, std::move(handler))) {
  beast::error_code ec;
  const asio::ip::address address = asio::ip::make_address(host == "localhost" ? "127.0.0.1" : host, ec);
  if (ec) fail("cannot listen for {} on {}:{}: not an IP address", what, host, port);
  const tcp::endpoint endpoint(address, static_cast<unsigned short>(port));
  Impl& s = *impl_;
  s.acceptor.open(endpoint.protocol(), ec);
  if (!ec) s.acceptor.set_option(asio::socket_base::reuse_address(true), ec);  // not SO_REUSEPORT: no sharing
  if (!ec) s.acceptor.bind(endpoint, ec);
  if (!ec) s.acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) fail("cannot listen for {} on {}:{} (port in use?): {}", what, host, port, ec.message());
}

HttpListener::~HttpListener() {
  stop();
}

int HttpListener::port() const {
  return impl_->acceptor.local_endpoint().port();
}

int64_t HttpListener::body_bytes_held() const {
  return impl_->body_bytes.load();
}

void HttpListener::start() {
  Impl& s = *impl_;
  if (s.started) return;
  s.started = true;
  s.accept();
  for (int i = 0; i < s.limits.threads; ++i)
    s.threads.emplace_back([&s] {
      for (;;) {  // a handler that throws (out of memory) costs its connection, never the thread
        try {
          s.io.run();
          return;
        } catch (const std::exception&) {
        }
      }
    });
}

void HttpListener::stop() {
  Impl& s = *impl_;
  if (s.stopped) return;
  s.stopped = true;
  s.stopping = true;
  asio::post(s.acceptor.get_executor(), [&s] {
    beast::error_code ignored;
    s.acceptor.close(ignored);
  });
  // Requests being handled finish and their replies go out; idle connections are dropped with the loop.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (s.busy.load() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  s.io.stop();
  for (std::thread& t : s.threads) t.join();
}

}  // namespace toptag
