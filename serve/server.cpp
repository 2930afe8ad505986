#include "serve/server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "serve/grpc_frontend.h"

namespace toptag {

using json = nlohmann::json;

namespace {

constexpr const char* kBinaryHeader = "Inference-Header-Content-Length";  // Triton's binary tensor extension

int http_status(const RequestError& e) {
  switch (e.kind()) {
    case RequestError::Kind::not_found:
      return 404;
    case RequestError::Kind::unavailable:
      return 503;
    case RequestError::Kind::internal:
      return 500;
    case RequestError::Kind::invalid:
      break;
  }
  return 400;
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& message) {
  send_json(res, status, json{{"error", message}});
}

json metadata_json(const TensorMetadata& t) {
  return {{"name", t.name}, {"datatype", t.datatype}, {"shape", t.shape}};
}

void flatten_numbers(const json& j, std::vector<float>& out) {
  if (j.is_array()) {
    for (const json& v : j) flatten_numbers(v, out);
  } else if (j.is_number()) {
    out.push_back(j.get<float>());
  } else {
    throw RequestError(RequestError::Kind::invalid, "tensor 'data' must hold numbers (or nested arrays of numbers)");
  }
}

// POST /v2/models/{name}[/versions/{v}]/infer, JSON body with optional binary tensors after it.
void handle_infer(InferenceService& service, const httplib::Request& req, httplib::Response& res) {
  const std::string model = req.matches[1];
  const std::string version = req.matches.size() > 2 ? std::string(req.matches[2]) : std::string();
  try {
    size_t json_size = req.body.size();
    if (req.has_header(kBinaryHeader)) {
      try {
        json_size = std::stoul(req.get_header_value(kBinaryHeader));
      } catch (const std::exception&) {
        throw RequestError(RequestError::Kind::invalid, std::string("bad ") + kBinaryHeader + " header");
      }
      if (json_size > req.body.size())
        throw RequestError(RequestError::Kind::invalid, "JSON header longer than the body");
    }
    json body;
    try {
      body = json::parse(req.body.begin(), req.body.begin() + static_cast<std::ptrdiff_t>(json_size));
    } catch (const json::exception& e) {
      throw RequestError(RequestError::Kind::invalid, std::string("malformed JSON: ") + e.what());
    }
    if (!body.is_object() || !body.contains("inputs") || !body["inputs"].is_array() || body["inputs"].size() != 1)
      throw RequestError(RequestError::Kind::invalid, "the body needs \"inputs\": one tensor (images or constituents)");
    const json& in = body["inputs"][0];
    InputTensor t;
    std::vector<float> values;
    try {
      t.name = in.at("name").get<std::string>();
      t.datatype = in.at("datatype").get<std::string>();
      t.shape = in.at("shape").get<std::vector<int64_t>>();
      if (in.contains("parameters") && in["parameters"].contains("binary_data_size")) {
        const size_t bytes = in["parameters"]["binary_data_size"].get<size_t>();
        if (json_size + bytes > req.body.size() || bytes % 4 != 0)
          throw RequestError(RequestError::Kind::invalid,
                             "binary_data_size does not match the binary part of the body");
        values.resize(bytes / 4);
        std::memcpy(values.data(), req.body.data() + json_size, bytes);
      } else {
        flatten_numbers(in.at("data"), values);
      }
    } catch (const json::exception& e) {
      throw RequestError(RequestError::Kind::invalid, std::string("bad input tensor: ") + e.what());
    }
    t.values = values;
    std::vector<std::string> requested;
    std::vector<bool> binary;
    const bool binary_default = body.contains("parameters") && body["parameters"].value("binary_data_output", false);
    if (body.contains("outputs") && body["outputs"].is_array()) {
      for (const json& o : body["outputs"]) {
        if (!o.is_object() || !o.contains("name") || !o["name"].is_string())
          throw RequestError(RequestError::Kind::invalid, "each requested output needs a \"name\"");
        requested.push_back(o["name"].get<std::string>());
        binary.push_back(o.contains("parameters") ? o["parameters"].value("binary_data", binary_default)
                                                  : binary_default);
      }
    }
    const std::vector<OutputTensor> outputs = service.infer(model, version, t, requested);
    json response = {{"model_name", service.model_name()},
                     {"model_version", InferenceService::kVersion},
                     {"outputs", json::array()}};
    if (body.contains("id")) response["id"] = body["id"];
    std::string blob;
    for (size_t i = 0; i < outputs.size(); ++i) {
      const Tensor& v = outputs[i].value;
      json o = {{"name", outputs[i].name}, {"datatype", "FP32"}, {"shape", {v.dim(0), v.dim(1)}}};
      if (i < binary.size() ? binary[i] : binary_default) {
        o["parameters"] = {{"binary_data_size", v.numel() * 4}};
        blob.append(reinterpret_cast<const char*>(v.data()), static_cast<size_t>(v.numel()) * 4);
      } else {
        o["data"] = std::vector<float>(v.data(), v.data() + v.numel());
      }
      response["outputs"].push_back(o);
    }
    if (blob.empty()) return send_json(res, 200, response);
    const std::string header = response.dump();
    res.status = 200;
    res.set_header(kBinaryHeader, std::to_string(header.size()));
    res.set_content(header + blob, "application/octet-stream");
  } catch (const RequestError& e) {
    service.metrics().request_failure++;
    send_error(res, http_status(e), e.what());
  } catch (const std::exception& e) {
    service.metrics().request_failure++;
    send_error(res, 500, e.what());
  }
}

void add_routes(httplib::Server& http, InferenceService& s) {
  http.Get("/v2/health/live", [](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, {{"live", true}});
  });
  http.Get("/v2/health/ready", [&s](const httplib::Request&, httplib::Response& res) {
    send_json(res, s.ready() ? 200 : 503, {{"ready", s.ready()}});
  });
  http.Get("/v2", [](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, {{"name", "toptag"}, {"version", TOPTAG_VERSION}, {"extensions", {"binary_tensor_data"}}});
  });
  const auto model_metadata = [&s](const httplib::Request& req, httplib::Response& res) {
    try {
      s.check_model(req.matches[1], req.matches.size() > 2 ? std::string(req.matches[2]) : std::string());
      json inputs = json::array(), outputs = json::array();
      for (const auto& t : s.inputs()) inputs.push_back(metadata_json(t));
      for (const auto& t : s.outputs()) outputs.push_back(metadata_json(t));
      send_json(res, 200,
                {{"name", s.model_name()},
                 {"versions", {InferenceService::kVersion}},
                 {"platform", s.platform()},
                 {"inputs", inputs},
                 {"outputs", outputs}});
    } catch (const RequestError& e) {
      send_error(res, http_status(e), e.what());
    }
  };
  const auto model_ready = [&s](const httplib::Request& req, httplib::Response& res) {
    try {
      s.check_model(req.matches[1], req.matches.size() > 2 ? std::string(req.matches[2]) : std::string());
      send_json(res, s.ready() ? 200 : 503, {{"name", s.model_name()}, {"ready", s.ready()}});
    } catch (const RequestError& e) {
      send_error(res, http_status(e), e.what());
    }
  };
  const auto infer = [&s](const httplib::Request& req, httplib::Response& res) { handle_infer(s, req, res); };
  http.Get(R"(/v2/models/([^/]+))", model_metadata);
  http.Get(R"(/v2/models/([^/]+)/versions/([^/]+))", model_metadata);
  http.Get(R"(/v2/models/([^/]+)/ready)", model_ready);
  http.Get(R"(/v2/models/([^/]+)/versions/([^/]+)/ready)", model_ready);
  http.Post(R"(/v2/models/([^/]+)/infer)", infer);
  http.Post(R"(/v2/models/([^/]+)/versions/([^/]+)/infer)", infer);
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (res.body.empty())
      send_error(res, res.status, fmt::format("{} {}: HTTP status {}", req.method, req.path, res.status));
  });
}

// Binds `server` (port 0: any free port); returns the port. Serving starts later, once every
// listener is bound, so a failure here leaves no thread to clean up.
int bind_listener(httplib::Server& server, const std::string& host, int port, const char* what) {
  int listening = -1;
  server.set_socket_options([&listening](socket_t sock) {
    // SO_REUSEADDR only: cpp-httplib's default adds SO_REUSEPORT, which lets a second server bind
    // the same port silently and share its connections.
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listening = sock;
  });
  const int bound = port == 0 ? server.bind_to_any_port(host) : (server.bind_to_port(host, port) ? port : -1);
  if (bound <= 0) fail("cannot listen for {} on {}:{} (port in use?)", what, host, port);
  // Debian's cpp-httplib listens with a backlog of 5: dozens of clients connecting at once overflow it
  // and the kernel drops connections. Listening again on the bound socket raises the backlog.
  if (listening >= 0) ::listen(listening, SOMAXCONN);
  return bound;
}

}  // namespace

InferenceServer::InferenceServer(Tagger tagger, const ServerOptions& options) : options_(options) {
  engine_ = std::make_unique<BatchingEngine>(std::move(tagger), options.engine);
  service_ = std::make_unique<InferenceService>(*engine_, options.model_name, options.limits);
  if (options.grpc_port >= 0) {
    grpc_ = std::make_unique<GrpcFrontEnd>(*service_, options.host, options.grpc_port, options.max_message_bytes);
    grpc_port_ = grpc_->port();
  }
  auto make_http = [&] {
    auto s = std::make_unique<httplib::Server>();
    s->set_payload_max_length(static_cast<size_t>(options.max_message_bytes));
    s->new_task_queue = [] { return new httplib::ThreadPool(64); };  // one thread per concurrent client
    s->set_keep_alive_max_count(100000);
    s->set_tcp_nodelay(true);  // one small response per request: do not let Nagle hold it back
    return s;
  };
  if (options.http_port >= 0) {
    http_ = make_http();
    add_routes(*http_, *service_);
    http_port_ = bind_listener(*http_, options.host, options.http_port, "HTTP");
  }
  if (options.metrics_port >= 0) {
    metrics_ = make_http();
    metrics_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(service_->metrics_text(), "text/plain; version=0.0.4");
    });
    metrics_port_ = bind_listener(*metrics_, options.host, options.metrics_port, "metrics");
  }
  for (httplib::Server* server : {http_.get(), metrics_.get()})
    if (server) listeners_.emplace_back([server] { server->listen_after_bind(); });
}

InferenceServer::~InferenceServer() {
  shutdown();
}

void InferenceServer::shutdown() {
  if (stopped_) return;
  stopped_ = true;
  if (grpc_) grpc_->shutdown();  // waits for in-flight gRPC calls
  if (http_) http_->stop();      // stops accepting; handlers already running complete
  if (metrics_) metrics_->stop();
  for (std::thread& t : listeners_) t.join();
  engine_->stop();
}

}  // namespace toptag
