#include "serve/http_api.h"

#include <fmt/format.h>

#include <cctype>
#include <cfloat>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "serve/extensions.h"

namespace toptag {

using json = nlohmann::json;

namespace {

HttpReply json_reply(int status, const json& body) {
  HttpReply r;
  r.status = status;
  // Names and messages may echo a client's bytes: replace invalid UTF-8 rather than throw.
  r.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  return r;
}

// "/v2/models/a%20b/infer?x=1" -> {"v2", "models", "a b", "infer"}. Empty segments are kept, so
// "/v2//models" does not match a route.
std::vector<std::string> path_segments(const std::string& target) {
  const std::string path = target.substr(0, target.find('?'));
  std::vector<std::string> out;
  if (path.empty() || path[0] != '/') return out;
  std::string segment;
  for (size_t i = 1; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      out.push_back(std::move(segment));
      segment.clear();
    } else if (path[i] == '%' && i + 2 < path.size() && std::isxdigit(static_cast<unsigned char>(path[i + 1])) &&
               std::isxdigit(static_cast<unsigned char>(path[i + 2]))) {
      segment.push_back(static_cast<char>(std::stoi(path.substr(i + 1, 2), nullptr, 16)));
      i += 2;
    } else {
      segment.push_back(path[i]);
    }
  }
  return out;
}

// The JSON text, refusing nesting deeper than kMaxJsonDepth before building it.
json parse_json(std::string_view text) {
  const json::parser_callback_t limit_depth = [](int depth, json::parse_event_t, json&) {
    if (depth > kMaxJsonDepth) throw invalid(fmt::format("JSON nested deeper than {} levels", kMaxJsonDepth));
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), limit_depth);
  } catch (const json::exception& e) {
    throw invalid(std::string("malformed JSON: ") + e.what());
  }
}

// A JSON integer in [0, max], or a RequestError naming `what`.
uint64_t count_value(const json& j, const std::string& what, uint64_t max) {
  if (!j.is_number_integer() || (!j.is_number_unsigned() && j.get<int64_t>() < 0))
    throw invalid(fmt::format("{} must be a non-negative integer, got {}", what,
                              j.dump(-1, ' ', false, json::error_handler_t::replace)));
  const uint64_t v = j.get<uint64_t>();
  if (v > max) throw invalid(fmt::format("{} = {} is too large", what, v));
  return v;
}

// The "parameters" object of `j` (the request, an input or an output), if it has one, as the
// service reads them: booleans, integers, numbers and strings.
Parameters parameters_of(const json& j, const std::string& where) {
  Parameters out;
  if (!j.contains("parameters")) return out;
  const json& p = j["parameters"];
  if (!p.is_object()) throw invalid(fmt::format("\"parameters\" of {} must be a JSON object", where));
  for (const auto& [key, v] : p.items()) {
    if (v.is_boolean())
      out[key] = v.get<bool>();
    else if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t{INT64_MAX})
      throw invalid(fmt::format("parameter '{}' of {} is too large", clip(key), where));
    else if (v.is_number_integer())
      out[key] = v.get<int64_t>();
    else if (v.is_number_float())
      out[key] = v.get<double>();
    else if (v.is_string())
      out[key] = v.get<std::string>();
    else
      throw invalid(fmt::format("parameter '{}' of {} must be a boolean, a number or a string", clip(key), where));
  }
  return out;
}

// Takes parameter `key` out of `p`: the HTTP front end honours it itself.
std::optional<bool> take_flag(Parameters& p, const std::string& key, const std::string& where) {
  const std::optional<bool> v = flag_parameter(p, key, where);
  p.erase(key);
  return v;
}

// Nested arrays of numbers, flattened (depth is bounded by the parser). Every value must fit FP32.
void flatten_numbers(const json& j, std::vector<float>& out) {
  if (j.is_array()) {
    for (const json& v : j) flatten_numbers(v, out);
    return;
  }
  if (!j.is_number()) throw invalid("tensor 'data' must hold numbers (or nested arrays of numbers)");
  const double v = j.get<double>();
  if (!(std::abs(v) <= FLT_MAX)) throw invalid(fmt::format("tensor 'data' holds {}, outside the FP32 range", v));
  out.push_back(static_cast<float>(v));
}

// The input tensor of a request body: its name, datatype, shape and values (JSON "data", or raw
// bytes after the JSON part with the binary extension).
InputTensor read_input(const json& in, const std::string& body, size_t json_size, std::vector<float>& values) {
  if (!in.is_object()) throw invalid("each input must be a JSON object");
  for (const char* key : {"name", "datatype"})
    if (!in.contains(key) || !in[key].is_string()) throw invalid(fmt::format("the input needs a string \"{}\"", key));
  if (!in.contains("shape") || !in["shape"].is_array() || in["shape"].size() > 8)
    throw invalid("the input needs a \"shape\": an array of at most 8 dimensions");
  InputTensor t;
  t.name = in["name"].get<std::string>();
  t.datatype = in["datatype"].get<std::string>();
  for (const json& d : in["shape"])
    t.shape.push_back(static_cast<int64_t>(count_value(d, "a shape dimension", 1 << 30)));
  const std::string where = fmt::format("input '{}'", clip(t.name));
  t.parameters = parameters_of(in, where);
  if (t.parameters.contains("binary_data_size")) {
    const int64_t bytes = *integer_parameter(t.parameters, "binary_data_size", where);
    t.parameters.erase("binary_data_size");
    if (bytes < 0) throw invalid(fmt::format("binary_data_size must be a non-negative integer, got {}", bytes));
    if (static_cast<uint64_t>(bytes) > body.size() - json_size || bytes % 4 != 0)
      throw invalid(fmt::format("binary_data_size {} does not match the {} bytes after the JSON header", bytes,
                                body.size() - json_size));
    values.resize(static_cast<size_t>(bytes) / 4);
    if (bytes > 0) std::memcpy(values.data(), body.data() + json_size, static_cast<size_t>(bytes));
  } else if (t.parameters.contains("shared_memory_region")) {
    if (in.contains("data")) throw invalid(fmt::format("{} has both \"data\" and shared_memory_region", where));
  } else {
    if (!in.contains("data"))
      throw invalid(
          "the input needs \"data\" (or binary_data_size with the binary extension, or shared_memory_region)");
    flatten_numbers(in["data"], values);
  }
  t.values = values;
  return t;
}

HttpReply infer(InferenceService& service, const std::string& model, const std::string& version,
                const HttpRequest& req) {
  size_t json_size = req.body.size();
  if (!req.binary_header.empty()) {
    const char* end = req.binary_header.data() + req.binary_header.size();
    const auto [ptr, ec] = std::from_chars(req.binary_header.data(), end, json_size);
    if (ec != std::errc() || ptr != end) throw invalid(fmt::format("bad {} header: not a byte count", kBinaryHeader));
    if (json_size > req.body.size())
      throw invalid(fmt::format("{} = {} is longer than the {}-byte body", kBinaryHeader, json_size, req.body.size()));
    // Triton's raw binary request: the body is one input's bytes, with no JSON naming it.
    if (json_size == 0)
      throw invalid(
          fmt::format("{}: 0 makes the body one raw input tensor, which needs a model with exactly one "
                      "input; this model has two ('{}', '{}'): send a JSON header that names the input",
                      kBinaryHeader, kImagesTensor, kConstituentsTensor));
  }
  // A JSON tree takes about ten times its text in memory: tensors beyond a few MB must come in the
  // binary extension, as tritonclient sends them by default.
  if (json_size > kMaxJsonBytes)
    throw invalid(
        fmt::format("the JSON part is {} bytes, over {} MB: send large tensors with the binary extension "
                    "(binary_data_size)",
                    json_size, kMaxJsonBytes >> 20));
  const json body = parse_json(std::string_view(req.body).substr(0, json_size));
  if (!body.is_object() || !body.contains("inputs") || !body["inputs"].is_array() || body["inputs"].size() != 1)
    throw invalid("the body needs \"inputs\": one tensor (images or constituents)");
  if (body.contains("id") && !body["id"].is_string()) throw invalid("\"id\" must be a string");
  InferRequest request{model, version, parameters_of(body, "the request"), {}, {}};
  const bool binary_default = take_flag(request.parameters, "binary_data_output", "the request").value_or(false);
  std::vector<float> values;
  request.input = read_input(body["inputs"][0], req.body, json_size, values);

  std::vector<bool> binary;
  if (body.contains("outputs")) {
    if (!body["outputs"].is_array()) throw invalid("\"outputs\" must be an array");
    for (const json& o : body["outputs"]) {
      if (!o.is_object() || !o.contains("name") || !o["name"].is_string())
        throw invalid("each requested output needs a \"name\"");
      const std::string name = o["name"].get<std::string>();
      const std::string where = fmt::format("output '{}'", clip(name));
      OutputRequest out{name, parameters_of(o, where)};
      binary.push_back(take_flag(out.parameters, "binary_data", where).value_or(binary_default));
      request.outputs.push_back(std::move(out));
    }
  }
  const std::vector<OutputTensor> outputs = service.infer(request, req.cancelled);

  json response = {{"model_name", service.model_name()}, {"model_version", kModelVersion}, {"outputs", json::array()}};
  if (body.contains("id")) response["id"] = body["id"];
  std::string blob;
  for (size_t i = 0; i < outputs.size(); ++i) {
    const OutputTensor& v = outputs[i];
    json o = {{"name", v.name}, {"datatype", v.datatype()}, {"shape", v.shape()}};
    if (!v.shared_memory_region.empty()) {  // written there, not sent
      o["parameters"] = {{"shared_memory_region", v.shared_memory_region},
                         {"shared_memory_byte_size", v.shared_memory_byte_size}};
    } else if (i < binary.size() ? binary[i] : binary_default) {
      const size_t before = blob.size();
      v.append_raw(blob);
      o["parameters"] = {{"binary_data_size", blob.size() - before}};
    } else if (v.k > 0) {
      o["data"] = v.classes;
    } else {
      o["data"] = std::vector<float>(v.value.data(), v.value.data() + v.value.numel());
    }
    response["outputs"].push_back(o);
  }
  HttpReply reply = json_reply(200, response);
  if (blob.empty()) return reply;
  reply.headers.emplace_back(kBinaryHeader, std::to_string(reply.body.size()));
  reply.content_type = "application/octet-stream";
  reply.body += blob;
  return reply;
}

json metadata_json(const TensorMetadata& t) {
  return {{"name", t.name}, {"datatype", t.datatype}, {"shape", t.shape}};
}

HttpReply model_metadata(InferenceService& s) {
  json inputs = json::array(), outputs = json::array();
  for (const auto& t : s.inputs()) inputs.push_back(metadata_json(t));
  for (const auto& t : s.outputs()) outputs.push_back(metadata_json(t));
  return json_reply(200, {{"name", s.model_name()},
                          {"versions", {kModelVersion}},
                          {"platform", s.platform()},
                          {"inputs", inputs},
                          {"outputs", outputs}});
}

// Routes /v2/models/NAME[/versions/V][/ACTION] and /v2/models/stats (every model's statistics);
// `rest` starts after "models".
HttpReply model_route(InferenceService& s, const HttpRequest& req, const std::vector<std::string>& rest) {
  if (rest.empty()) return http_error(404, "no model named in the path");
  const bool every_model = rest == std::vector<std::string>{"stats"};
  const std::string name = every_model ? "" : rest[0];
  std::string version;
  size_t next = 1;
  if (rest.size() >= 3 && rest[1] == "versions") {
    version = rest[2];
    next = 3;
  }
  const std::string action = every_model ? "stats" : next < rest.size() ? rest[next] : "";
  const bool known = action == "" || action == "ready" || action == "infer" || action == "config" || action == "stats";
  if (!every_model && (next + 1 < rest.size() || !known))
    return http_error(404, fmt::format("{} {}: no such endpoint", req.method, req.target));
  const std::string method = action == "infer" ? "POST" : "GET";
  if (req.method != method && !(req.method == "HEAD" && method == "GET"))
    return http_error(405, fmt::format("{} {}: use {}", req.method, req.target, method));
  if (action == "infer") {
    const auto start = std::chrono::steady_clock::now();
    try {
      return infer(s, name, version, req);
    } catch (const RequestError& e) {
      // A request for another model never reached this one: Triton counts it nowhere.
      if (e.kind() != RequestError::Kind::not_found)
        s.metrics().count_failure(e.kind(), std::chrono::steady_clock::now() - start);
      throw;
    } catch (const std::exception& e) {
      s.metrics().count_failure(RequestError::Kind::internal, std::chrono::steady_clock::now() - start);
      throw RequestError(RequestError::Kind::internal, e.what());
    }
  }
  if (action == "config") return json_reply(200, message_json(model_config(s, name, version)));
  if (action == "stats") return json_reply(200, message_json(model_statistics(s, name, version)));
  s.check_model(name, version);
  if (action == "ready") return json_reply(s.ready() ? 200 : 503, {{"name", s.model_name()}, {"ready", s.ready()}});
  return model_metadata(s);
}

// Triton's system shared-memory API; `rest` starts after "systemsharedmemory":
//   GET  status, region/NAME/status          the regions, as [{"name", "key", "offset", "byte_size"}]
//   POST region/NAME/register                body {"key": "/name", "offset": 0, "byte_size": N}
//   POST region/NAME/unregister, unregister  one region, or every one
HttpReply shared_memory_route(InferenceService& s, const HttpRequest& req, const std::vector<std::string>& rest) {
  SharedMemoryRegistry& registry = s.shared_memory();
  std::string name, action;
  if (rest.size() == 1) {
    action = rest[0];
  } else if (rest.size() == 3 && rest[0] == "region" && !rest[1].empty()) {
    name = rest[1];
    action = rest[2];
  } else {
    return http_error(404, fmt::format("{} {}: no such endpoint", req.method, req.target));
  }
  if (action != "status" && action != "register" && action != "unregister")
    return http_error(404, fmt::format("{} {}: no such endpoint", req.method, req.target));
  if (action == "register" && name.empty())
    return http_error(404, fmt::format("{} {}: register a region at region/NAME/register", req.method, req.target));
  const std::string method = action == "status" ? "GET" : "POST";
  if (req.method != method && !(req.method == "HEAD" && method == "GET"))
    return http_error(405, fmt::format("{} {}: use {}", req.method, req.target, method));
  if (action == "status") {
    json regions = json::array();
    for (const SharedMemoryRegionStatus& r : registry.status(name))
      regions.push_back({{"name", r.name}, {"key", r.key}, {"offset", r.offset}, {"byte_size", r.byte_size}});
    return json_reply(200, regions);
  }
  if (action == "unregister") {
    registry.unregister(name);
    return json_reply(200, json::object());
  }
  if (req.body.size() > 4096) throw invalid("a register request's body is a small JSON object");
  const json body = parse_json(req.body);
  if (!body.is_object() || !body.contains("key") || !body["key"].is_string() || !body.contains("byte_size"))
    throw invalid("register needs a JSON body {\"key\": \"/name\", \"offset\": 0, \"byte_size\": N}");
  const uint64_t max = uint64_t{1} << 48;
  const uint64_t offset = body.contains("offset") ? count_value(body["offset"], "offset", max) : 0;
  s.register_shared_memory(name, body["key"].get<std::string>(), offset,
                           count_value(body["byte_size"], "byte_size", max));
  return json_reply(200, json::object());
}

}  // namespace

int http_status(RequestError::Kind kind) {
  switch (kind) {
    case RequestError::Kind::not_found:
      return 404;
    case RequestError::Kind::unavailable:
    case RequestError::Kind::exhausted:
      return 503;
    case RequestError::Kind::cancelled:
      return 499;  // the client closed the request (nginx's code; nobody reads it)
    case RequestError::Kind::timeout:
      return 504;
    case RequestError::Kind::internal:
      return 500;
    case RequestError::Kind::invalid:
      break;
  }
  return 400;
}

HttpReply http_error(int status, const std::string& message) {
  return json_reply(status, json{{"error", message}});
}

HttpReply answer_http(InferenceService& s, const HttpRequest& req) {
  try {
    const std::vector<std::string> path = path_segments(req.target);
    if (path.size() >= 2 && path[0] == "v2" && path[1] == "models")
      return model_route(s, req, std::vector<std::string>(path.begin() + 2, path.end()));
    if (path.size() >= 2 && path[0] == "v2" && path[1] == "systemsharedmemory")
      return shared_memory_route(s, req, std::vector<std::string>(path.begin() + 2, path.end()));
    if (req.method != "GET" && req.method != "HEAD")
      return http_error(req.method == "POST" ? 404 : 405, req.method + " " + req.target + ": no such endpoint");
    if (path == std::vector<std::string>{"v2", "health", "live"}) return json_reply(200, {{"live", true}});
    if (path == std::vector<std::string>{"v2", "health", "ready"})
      return json_reply(s.ready() ? 200 : 503, {{"ready", s.ready()}});
    if (path == std::vector<std::string>{"v2"})
      return json_reply(200, {{"name", "toptag"}, {"version", TOPTAG_VERSION}, {"extensions", s.extensions()}});
    return http_error(404, fmt::format("{} {}: no such endpoint", req.method, req.target));
  } catch (const RequestError& e) {
    return http_error(http_status(e.kind()), e.what());
  } catch (const std::exception& e) {
    return http_error(500, e.what());
  }
}

}  // namespace toptag
