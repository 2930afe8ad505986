#include "serve/client.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <thread>

#include "data/jets.h"
#include "inference.grpc.pb.h"
#include "io/progress.h"
#include "triton/model_config.h"

namespace toptag {

using json = nlohmann::json;

constexpr const char* kReplyBinaryHeader = "Inference-Header-Content-Length";  // Triton's binary extension

const RemoteTensor* RemoteModel::input(const std::string& n) const {
  for (const RemoteTensor& t : inputs)
    if (t.name == n) return &t;
  return nullptr;
}

// Two mapped POSIX shared-memory objects, named after the process and a counter so that every
// client's are its own; the server knows them as regions of the same names.
class ClientSharedMemory {
 public:
  struct Object {
    std::string name, key;
    size_t bytes = 0;
    unsigned char* data = nullptr;
  };
  Object input, output;

  ClientSharedMemory(size_t input_bytes, size_t output_bytes) {
    static std::atomic<int> counter{0};
    const std::string base = fmt::format("toptag_{}_{}", getpid(), counter++);
    make(input, base + "_in", input_bytes);
    try {
      make(output, base + "_out", output_bytes);
    } catch (...) {
      release();
      throw;
    }
  }
  ~ClientSharedMemory() { release(); }

 private:
  void release() {
    for (Object* o : {&input, &output}) {
      if (o->data) munmap(o->data, o->bytes);
      if (!o->key.empty()) shm_unlink(o->key.c_str());
      *o = {};
    }
  }
  static void make(Object& o, const std::string& name, size_t bytes) {
    o.name = name;
    o.key = "/" + name;
    o.bytes = std::max<size_t>(bytes, 1);
    const int fd = shm_open(o.key.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0)
      throw ClientError(fmt::format("cannot create shared memory {}: {}", o.key, std::strerror(errno)), false);
    const bool sized = ftruncate(fd, static_cast<off_t>(o.bytes)) == 0;
    void* map = sized ? mmap(nullptr, o.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
    close(fd);
    if (map == MAP_FAILED) {
      shm_unlink(o.key.c_str());
      o.key.clear();
      throw ClientError(fmt::format("cannot map {} bytes of shared memory: {}", o.bytes, std::strerror(errno)), false);
    }
    o.data = static_cast<unsigned char*>(map);
  }
};

InferenceClient::~InferenceClient() = default;

void InferenceClient::release_shared_memory() {
  if (!shared_memory_) return;
  unregister_region(shared_memory_->input.name);
  unregister_region(shared_memory_->output.name);
  shared_memory_.reset();
}

void InferenceClient::use_shared_memory(size_t input_bytes, size_t output_bytes) {
  auto shm = std::make_unique<ClientSharedMemory>(input_bytes, output_bytes);
  register_region(shm->input.name, shm->input.key, shm->input.bytes);
  try {
    register_region(shm->output.name, shm->output.key, shm->output.bytes);
  } catch (...) {
    unregister_region(shm->input.name);
    throw;
  }
  shared_memory_ = std::move(shm);
}

namespace {

// Where a request's tensors go in the client's shared memory: the input at the start of its object;
// the probabilities at the start of the output object, the features after them.
struct SharedMemoryLayout {
  size_t input_bytes, probabilities_bytes, features_offset, features_bytes;
};

SharedMemoryLayout layout(const ClientSharedMemory& shm, const std::vector<int64_t>& shape, size_t values) {
  const int64_t n = shape.empty() ? 0 : shape[0];
  SharedMemoryLayout l{values * 4, static_cast<size_t>(n) * 2 * 4, 0, 0};
  if (l.input_bytes > shm.input.bytes || l.probabilities_bytes > shm.output.bytes)
    throw ClientError(fmt::format("a request of {} input and {} output bytes does not fit the client's shared "
                                  "memory ({} and {} bytes)",
                                  l.input_bytes, l.probabilities_bytes, shm.input.bytes, shm.output.bytes),
                      false);
  l.features_offset = l.probabilities_bytes;
  l.features_bytes = shm.output.bytes - l.features_offset;  // may be 0: then no features fit
  return l;
}

// An output the server wrote to the client's shared memory: `bytes` at `offset` of the output object.
void read_output(const ClientSharedMemory& shm, size_t offset, size_t bytes, size_t capacity, std::vector<float>& dst,
                 const std::string& name) {
  if (bytes > capacity || bytes % 4 != 0)
    throw ClientError(
        fmt::format("the server wrote {} bytes of '{}' into {} bytes of shared memory", bytes, name, capacity), false);
  dst.resize(bytes / 4);
  if (bytes > 0) std::memcpy(dst.data(), shm.output.data + offset, bytes);
}

void split_host_port(const std::string& url, const std::string& scheme, std::string& host, int& port) {
  const std::string rest = url.substr(scheme.size());
  const size_t colon = rest.rfind(':');
  if (colon == std::string::npos) fail("server URL '{}' needs a port: {}HOST:PORT", url, scheme);
  host = rest.substr(0, colon);
  try {
    port = std::stoi(rest.substr(colon + 1));
  } catch (const std::exception&) {
    fail("server URL '{}': bad port", url);
  }
}

class GrpcClient final : public InferenceClient {
 public:
  ~GrpcClient() override { release_shared_memory(); }
  GrpcClient(const std::string& target, std::string model, int64_t timeout_ms)
      : model_(std::move(model)), timeout_ms_(timeout_ms) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(256 << 20);
    args.SetMaxSendMessageSize(256 << 20);
    stub_ = inference::GRPCInferenceService::NewStub(
        grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
  }

  bool ready() override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    inference::ModelReadyRequest q;
    q.set_name(model_);
    inference::ModelReadyResponse r;
    return stub_->ModelReady(&ctx, q, &r).ok() && r.ready();
  }

  RemoteModel metadata() override {
    grpc::ClientContext ctx;
    set_deadline(ctx);
    inference::ModelMetadataRequest q;
    q.set_name(model_);
    inference::ModelMetadataResponse r;
    check(stub_->ModelMetadata(&ctx, q, &r), "ModelMetadata");
    RemoteModel m{r.name(), r.platform(), {}, {}};
    for (const auto& t : r.inputs()) m.inputs.push_back({t.name(), t.datatype(), {t.shape().begin(), t.shape().end()}});
    for (const auto& t : r.outputs())
      m.outputs.push_back({t.name(), t.datatype(), {t.shape().begin(), t.shape().end()}});
    return m;
  }

  InferReply infer(const std::string& input, const std::vector<int64_t>& shape, std::span<const float> values,
                   bool want_features) override {
    inference::ModelInferRequest q;
    q.set_model_name(model_);
    auto* in = q.add_inputs();
    in->set_name(input);
    in->set_datatype("FP32");
    for (int64_t d : shape) in->add_shape(d);
    auto* probabilities = q.add_outputs();
    probabilities->set_name(kProbabilitiesTensor);
    auto* features = want_features ? q.add_outputs() : nullptr;
    if (features) features->set_name(kFeaturesTensor);
    std::optional<SharedMemoryLayout> shm;
    if (shared_memory_) {
      const ClientSharedMemory& m = *shared_memory_;
      shm = layout(m, shape, values.size());
      if (!values.empty()) std::memcpy(m.input.data, values.data(), shm->input_bytes);
      set_region(*in->mutable_parameters(), m.input.name, 0, shm->input_bytes);
      set_region(*probabilities->mutable_parameters(), m.output.name, 0, shm->probabilities_bytes);
      if (features)
        set_region(*features->mutable_parameters(), m.output.name, shm->features_offset, shm->features_bytes);
    } else {
      q.add_raw_input_contents(reinterpret_cast<const char*>(values.data()), values.size() * 4);
    }
    grpc::ClientContext ctx;
    set_deadline(ctx);
    inference::ModelInferResponse r;
    check(stub_->ModelInfer(&ctx, q, &r), "ModelInfer");
    InferReply reply;
    for (int i = 0; i < r.outputs_size(); ++i) {
      const bool is_features = r.outputs(i).name() == kFeaturesTensor;
      if (shm) {
        const auto& p = r.outputs(i).parameters();
        const auto size = p.find("shared_memory_byte_size");
        if (size == p.end())
          throw ClientError(
              fmt::format("ModelInfer: output '{}' was not written to shared memory", r.outputs(i).name()), false);
        read_output(*shared_memory_, is_features ? shm->features_offset : 0,
                    static_cast<size_t>(std::max<int64_t>(0, size->second.int64_param())),
                    is_features ? shm->features_bytes : shm->probabilities_bytes,
                    is_features ? reply.features : reply.probabilities, r.outputs(i).name());
        continue;
      }
      if (i >= r.raw_output_contents_size()) throw ClientError("ModelInfer: response lacks raw output contents", false);
      const std::string& raw = r.raw_output_contents(i);
      if (raw.size() % 4 != 0)
        throw ClientError(
            fmt::format("ModelInfer: output '{}' has {} bytes, not FP32 values", r.outputs(i).name(), raw.size()),
            false);
      std::vector<float>& dst = is_features ? reply.features : reply.probabilities;
      dst.resize(raw.size() / 4);
      if (!dst.empty()) std::memcpy(dst.data(), raw.data(), dst.size() * 4);
    }
    return reply;
  }

  int64_t max_batch() override {
    grpc::ClientContext ctx;
    set_deadline(ctx);
    inference::ModelConfigRequest q;
    q.set_name(model_);
    inference::ModelConfigResponse r;
    check(stub_->ModelConfig(&ctx, q, &r), "ModelConfig");
    return r.config().max_batch_size();
  }

 protected:
  void register_region(const std::string& name, const std::string& key, size_t bytes) override {
    grpc::ClientContext ctx;
    set_deadline(ctx);
    inference::SystemSharedMemoryRegisterRequest q;
    q.set_name(name);
    q.set_key(key);
    q.set_byte_size(bytes);
    inference::SystemSharedMemoryRegisterResponse r;
    check(stub_->SystemSharedMemoryRegister(&ctx, q, &r), "SystemSharedMemoryRegister");
  }
  void unregister_region(const std::string& name) override {
    grpc::ClientContext ctx;
    set_deadline(ctx);
    inference::SystemSharedMemoryUnregisterRequest q;
    q.set_name(name);
    inference::SystemSharedMemoryUnregisterResponse r;
    stub_->SystemSharedMemoryUnregister(&ctx, q, &r);  // best effort: the client is going away
  }

 private:
  static void set_region(google::protobuf::Map<std::string, inference::InferParameter>& p, const std::string& region,
                         size_t offset, size_t bytes) {
    p["shared_memory_region"].set_string_param(region);
    p["shared_memory_offset"].set_int64_param(static_cast<int64_t>(offset));
    p["shared_memory_byte_size"].set_int64_param(static_cast<int64_t>(bytes));
  }
  void set_deadline(grpc::ClientContext& ctx) const {
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms_));
  }
  static void check(const grpc::Status& s, const char* call) {
    if (s.ok()) return;
    const bool retryable = s.error_code() == grpc::StatusCode::UNAVAILABLE ||
                           s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
                           s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
    throw ClientError(fmt::format("{} failed ({}): {}", call, static_cast<int>(s.error_code()), s.error_message()),
                      retryable);
  }

  std::string model_;
  int64_t timeout_ms_;
  std::unique_ptr<inference::GRPCInferenceService::Stub> stub_;
};

class HttpClient final : public InferenceClient {
 public:
  ~HttpClient() override { release_shared_memory(); }
  HttpClient(const std::string& host, int port, std::string model, int64_t timeout_ms)
      : client_(host, port), model_(std::move(model)) {
    const time_t sec = static_cast<time_t>(timeout_ms / 1000);
    client_.set_read_timeout(sec, 0);
    client_.set_write_timeout(sec, 0);
    client_.set_connection_timeout(5, 0);
    client_.set_keep_alive(true);
    client_.set_tcp_nodelay(true);
  }

  bool ready() override {
    auto res = client_.Get(("/v2/models/" + model_ + "/ready").c_str());
    return res && res->status == 200;
  }

  RemoteModel metadata() override {
    try {
      return parse_metadata(get_json("/v2/models/" + model_));
    } catch (const ClientError&) {
      throw;
    } catch (const std::exception& e) {
      throw ClientError(fmt::format("GET /v2/models/{}: malformed metadata: {}", model_, e.what()), false);
    }
  }

  static RemoteModel parse_metadata(const json& j) {
    RemoteModel m{j.value("name", ""), j.value("platform", ""), {}, {}};
    for (const json& t : j.at("inputs")) m.inputs.push_back({t.at("name"), t.at("datatype"), t.at("shape")});
    for (const json& t : j.at("outputs")) m.outputs.push_back({t.at("name"), t.at("datatype"), t.at("shape")});
    return m;
  }

  InferReply infer(const std::string& input, const std::vector<int64_t>& shape, std::span<const float> values,
                   bool want_features) override {
    // Binary tensor extension both ways: a JSON header, then the raw FP32 bytes; or, with shared
    // memory, the JSON header alone, naming the regions.
    json outputs = json::array({{{"name", kProbabilitiesTensor}, {"parameters", {{"binary_data", true}}}}});
    if (want_features) outputs.push_back({{"name", kFeaturesTensor}, {"parameters", {{"binary_data", true}}}});
    json in = {{"name", input},
               {"datatype", "FP32"},
               {"shape", shape},
               {"parameters", {{"binary_data_size", values.size() * 4}}}};
    std::optional<SharedMemoryLayout> shm;
    if (shared_memory_) {
      const ClientSharedMemory& m = *shared_memory_;
      shm = layout(m, shape, values.size());
      if (!values.empty()) std::memcpy(m.input.data, values.data(), shm->input_bytes);
      in["parameters"] = region(m.input.name, 0, shm->input_bytes);
      outputs[0]["parameters"] = region(m.output.name, 0, shm->probabilities_bytes);
      if (want_features) outputs[1]["parameters"] = region(m.output.name, shm->features_offset, shm->features_bytes);
    }
    const json header = {{"inputs", {in}}, {"outputs", outputs}};
    const std::string head = header.dump();
    std::string body = head;
    if (!shm) body.append(reinterpret_cast<const char*>(values.data()), values.size() * 4);
    httplib::Headers headers = {{kReplyBinaryHeader, std::to_string(head.size())}};
    auto res = client_.Post(("/v2/models/" + model_ + "/infer").c_str(), headers, body, "application/octet-stream");
    if (!res) throw ClientError(fmt::format("HTTP infer failed: {}", httplib::to_string(res.error())), true);
    if (res->status != 200)
      throw ClientError(fmt::format("HTTP infer failed ({}): {}", res->status, res->body), res->status == 503);
    try {
      if (shm) return read_shared_memory_reply(json::parse(res->body), *shm);
      return parse_reply(res->body, res->get_header_value(kReplyBinaryHeader));
    } catch (const ClientError&) {
      throw;
    } catch (const std::exception& e) {  // JSON type errors: the reply is not what KServe defines
      throw ClientError(fmt::format("HTTP infer: malformed reply: {}", e.what()), false);
    }
  }

  // The reply body: JSON outputs, their raw bytes after it when the binary extension is used.
  static InferReply parse_reply(const std::string& body, const std::string& binary_header) {
    size_t json_size = body.size();
    if (!binary_header.empty()) {
      const auto [end, ec] =
          std::from_chars(binary_header.data(), binary_header.data() + binary_header.size(), json_size);
      if (ec != std::errc() || end != binary_header.data() + binary_header.size() || json_size > body.size())
        throw ClientError(fmt::format("HTTP infer: bad {} header '{}' for a {}-byte reply", kReplyBinaryHeader,
                                      binary_header.substr(0, 40), body.size()),
                          false);
    }
    const json reply_json = json::parse(body.begin(), body.begin() + static_cast<std::ptrdiff_t>(json_size));
    InferReply reply;
    size_t offset = json_size;
    for (const json& o : reply_json.at("outputs")) {
      std::vector<float>& dst = o.at("name") == kFeaturesTensor ? reply.features : reply.probabilities;
      if (o.contains("parameters") && o["parameters"].contains("binary_data_size")) {
        const size_t bytes = o["parameters"]["binary_data_size"].get<size_t>();
        if (bytes > body.size() - offset || bytes % 4 != 0)
          throw ClientError(fmt::format("HTTP infer: an output claims {} binary bytes, the reply has {} left", bytes,
                                        body.size() - offset),
                            false);
        dst.resize(bytes / 4);
        if (bytes > 0) std::memcpy(dst.data(), body.data() + offset, bytes);
        offset += bytes;
      } else {
        dst = o.at("data").get<std::vector<float>>();
      }
    }
    return reply;
  }

  int64_t max_batch() override {
    try {
      return get_json("/v2/models/" + model_ + "/config").at("max_batch_size").get<int64_t>();
    } catch (const ClientError&) {
      throw;
    } catch (const std::exception& e) {
      throw ClientError(fmt::format("GET /v2/models/{}/config: malformed configuration: {}", model_, e.what()), false);
    }
  }

 protected:
  void register_region(const std::string& name, const std::string& key, size_t bytes) override {
    const std::string path = "/v2/systemsharedmemory/region/" + name + "/register";
    auto res =
        client_.Post(path.c_str(), json{{"key", key}, {"offset", 0}, {"byte_size", bytes}}.dump(), "application/json");
    if (!res) throw ClientError(fmt::format("POST {} failed: {}", path, httplib::to_string(res.error())), true);
    if (res->status != 200)
      throw ClientError(fmt::format("POST {} failed ({}): {}", path, res->status, res->body), false);
  }
  void unregister_region(const std::string& name) override {
    client_.Post(("/v2/systemsharedmemory/region/" + name + "/unregister").c_str(), "", "application/json");
  }

 private:
  static json region(const std::string& name, size_t offset, size_t bytes) {
    return {{"shared_memory_region", name}, {"shared_memory_offset", offset}, {"shared_memory_byte_size", bytes}};
  }
  // The outputs of a reply whose tensors the server wrote to the client's shared memory.
  InferReply read_shared_memory_reply(const json& reply_json, const SharedMemoryLayout& l) const {
    InferReply reply;
    for (const json& o : reply_json.at("outputs")) {
      const bool is_features = o.at("name") == kFeaturesTensor;
      read_output(*shared_memory_, is_features ? l.features_offset : 0,
                  o.at("parameters").at("shared_memory_byte_size").get<size_t>(),
                  is_features ? l.features_bytes : l.probabilities_bytes,
                  is_features ? reply.features : reply.probabilities, o.at("name").get<std::string>());
    }
    return reply;
  }
  json get_json(const std::string& path) {
    auto res = client_.Get(path.c_str());
    if (!res) throw ClientError(fmt::format("GET {} failed: {}", path, httplib::to_string(res.error())), true);
    if (res->status != 200)
      throw ClientError(fmt::format("GET {} failed ({}): {}", path, res->status, res->body), false);
    return json::parse(res->body);
  }

  httplib::Client client_;
  std::string model_;
};

}  // namespace

std::unique_ptr<InferenceClient> InferenceClient::connect(const std::string& url, const std::string& model,
                                                          int64_t timeout_ms) {
  std::string host;
  int port = 0;
  if (url.rfind("grpc://", 0) == 0) {
    split_host_port(url, "grpc://", host, port);
    return std::make_unique<GrpcClient>(fmt::format("{}:{}", host, port), model, timeout_ms);
  }
  if (url.rfind("http://", 0) == 0) {
    split_host_port(url, "http://", host, port);
    return std::make_unique<HttpClient>(host, port, model, timeout_ms);
  }
  fail("server URL '{}' must start with grpc:// or http://", url);
}

int retry_with_backoff(int retries, const std::function<void()>& attempt) {
  for (int retry = 0;; ++retry) {
    try {
      attempt();
      return retry;
    } catch (const ClientError& e) {
      if (!e.retryable() || retry >= retries) throw;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50 << retry));
  }
}

namespace {

// Jet i of a chunk as one request's input: one image, or one jet's constituents.
struct JetInput {
  const char* tensor;
  std::vector<int64_t> shape;
  std::span<const float> values;
};

JetInput jet_input(const Examples& ex, int64_t i, bool send_images) {
  if (send_images) {
    const int64_t per = ex.images.numel() / std::max<int64_t>(1, ex.images.dim(0));
    return {kImagesTensor,
            {1, ex.images.dim(1), ex.images.dim(2), ex.images.dim(3)},
            {ex.images.data() + i * per, static_cast<size_t>(per)}};
  }
  const int nc = ex.jets.n_constituents;
  return {kConstituentsTensor, {1, nc, 4}, {ex.jets.constituents.data() + i * nc * 4, static_cast<size_t>(nc) * 4}};
}

// A reply we cannot use is the server's error, not worth a retry: two finite probabilities, and
// finite features when they were asked for.
void check_reply(const InferReply& r, bool want_features, int64_t row, const std::string& file) {
  if (r.probabilities.size() != 2)
    throw ClientError(fmt::format("the server's reply for jet {} of {} holds {} probabilities, not 2", row, file,
                                  r.probabilities.size()),
                      false);
  if (want_features && r.features.empty())
    throw ClientError(fmt::format("the server's reply for jet {} of {} holds no features", row, file), false);
  for (const std::vector<float>* v : {&r.probabilities, &r.features})
    if (!all_finite(*v))
      throw ClientError(fmt::format("the server's reply for jet {} of {} holds NaN or inf", row, file), false);
}

// Runs work(client, i) for every i in [0, m), one thread per client taking the next i. The first
// exception stops the others and is rethrown here; anything a reply can throw is an error, never an
// abort. progress(done) is called from this thread about every 100 ms, and once at the end.
void run_workers(std::vector<std::unique_ptr<InferenceClient>>& clients, int64_t m,
                 const std::function<void(InferenceClient&, int64_t)>& work,
                 const std::function<void(int64_t)>& progress) {
  std::atomic<int64_t> next{0}, done{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&](InferenceClient& client) {
    for (int64_t i; (i = next++) < m;) {
      try {
        work(client, i);
      } catch (...) {
        std::lock_guard lock(error_mutex);
        if (!error) error = std::current_exception();
        next = m;  // stop the others
        return;
      }
      ++done;
    }
  };
  std::vector<std::thread> threads;
  for (auto& client : clients) threads.emplace_back(worker, std::ref(*client));
  while (done.load() < m) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    progress(done.load());
    std::lock_guard lock(error_mutex);
    if (error) break;
  }
  for (std::thread& t : threads) t.join();
  if (error) std::rethrow_exception(error);
  progress(m);
}

// The bytes of one jet's FP32 tensor `t` (its batch dimension 1); a variable dimension counts 4096.
size_t tensor_bytes(const RemoteTensor& t) {
  size_t n = 4;
  for (size_t i = 1; i < t.shape.size(); ++i) {
    n *= static_cast<size_t>(std::clamp<int64_t>(t.shape[i] > 0 ? t.shape[i] : 4096, 1, 1 << 20));
    if (n > (size_t{1} << 30)) fail("the server's tensor '{}' is over 1 GB per jet", t.name);
  }
  return n;
}

// The models' inputs that `file` can fill: images for an image file, constituents for a jet file.
void check_inputs(const RemoteModel& meta, const JetFile& file, const RemotePredictOptions& o) {
  if (!file.has_constituents() && !meta.input(kImagesTensor))
    fail("{}: model '{}' has no 'images' input", o.url, o.model);
  if (file.has_constituents() && !meta.input(kConstituentsTensor))  // e.g. a model of toptag export served by Triton
    fail("{}: model '{}' has no 'constituents' input: make images of {} first (toptag images) and send those", o.url,
         o.model, file.path());
}

}  // namespace

RemotePredictResult predict_remote(const JetFile& file, const RemotePredictOptions& o) {
  if (o.concurrency < 1) fail("--concurrency must be at least 1, got {}", o.concurrency);
  const auto start = std::chrono::steady_clock::now();
  std::unique_ptr<InferenceClient> probe = InferenceClient::connect(o.url, o.model);
  if (!probe->ready()) fail("{}: model '{}' is not ready (is the server running?)", o.url, o.model);
  const RemoteModel meta = probe->metadata();
  check_inputs(meta, file, o);
  const bool send_images = !file.has_constituents();
  // One jet's input, and its outputs (probabilities and features), in bytes: what each client's
  // shared memory must hold.
  const size_t input_bytes = tensor_bytes(*meta.input(send_images ? kImagesTensor : kConstituentsTensor));
  size_t output_bytes = 0;
  for (const RemoteTensor& t : meta.outputs) output_bytes += tensor_bytes(t);

  const int64_t n = o.max_jets > 0 ? std::min(o.max_jets, file.size()) : file.size();
  RemotePredictResult result;
  std::optional<Progress> progress;
  if (o.show_progress) progress.emplace("predict " + o.url, n, "jets");
  constexpr int64_t kChunk = 4096;  // jets read at once: memory stays bounded
  std::vector<std::unique_ptr<InferenceClient>> clients;
  for (int t = 0; t < o.concurrency; ++t) {
    clients.push_back(InferenceClient::connect(o.url, o.model));
    if (o.shared_memory) clients.back()->use_shared_memory(input_bytes, output_bytes);
  }
  std::atomic<int64_t> retried{0};
  for (int64_t start_row = 0; start_row < n; start_row += kChunk) {
    Examples ex = file.read(start_row, std::min(kChunk, n - start_row), result.dropped);
    const int64_t m = ex.size();
    if (!send_images && ex.jets.n_constituents != kMaxConstituents)
      fail("{}: jets have {} constituents; the server takes {}", file.path(), ex.jets.n_constituents, kMaxConstituents);
    std::vector<float> scores(static_cast<size_t>(m));
    std::vector<std::vector<float>> features(o.features ? static_cast<size_t>(m) : 0);
    int64_t shown = 0;
    run_workers(
        clients, m,
        [&](InferenceClient& client, int64_t i) {
          const JetInput in = jet_input(ex, i, send_images);
          retried += retry_with_backoff(o.retries, [&] {
            InferReply r = client.infer(in.tensor, in.shape, in.values, o.features);
            check_reply(r, o.features, ex.rows[i], file.path());
            scores[i] = r.probabilities[1];
            if (o.features) features[i] = std::move(r.features);
          });
        },
        [&](int64_t done) {
          if (progress) progress->advance(done - shown);
          shown = done;
        });
    result.predictions.score.insert(result.predictions.score.end(), scores.begin(), scores.end());
    result.predictions.label.insert(result.predictions.label.end(), ex.labels.begin(), ex.labels.end());
    for (auto& f : features) {
      if (result.feature_dim > 0 && static_cast<int64_t>(f.size()) != result.feature_dim)
        fail("{}: the server's replies hold {} and {} features for different jets of {}", o.url, result.feature_dim,
             f.size(), file.path());
      result.feature_dim = static_cast<int64_t>(f.size());
      result.features.insert(result.features.end(), f.begin(), f.end());
    }
  }
  if (progress) progress->finish();
  result.retried = retried.load();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace toptag
