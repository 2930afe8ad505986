// toptag serve | perf: the KServe v2 inference server, and the load generator that measures it
// (and in-process inference) as Triton's perf_analyzer does.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <pthread.h>

#include <csignal>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "apps/commands.h"
#include "apps/image_options.h"
#include "io/files.h"
#include "nn/blas.h"
#include "nn/check.h"
#include "nn/parallel.h"
#include "serve/perf.h"
#include "serve/server.h"

namespace toptag::apps {

namespace {

struct ServeArgs {
  std::string checkpoint, port_file, shared_memory = "system";
  ServerOptions server;
  ImageArgs image;
  bool emulate = false;
};

void write_port_file(const std::string& path, const InferenceServer& server) {
  write_text_atomically(path, nlohmann::json{{"grpc", server.grpc_port()},
                                             {"http", server.http_port()},
                                             {"metrics", server.metrics_port()},
                                             {"pid", static_cast<int64_t>(getpid())}}
                                      .dump() +
                                  "\n");
}

// "http://HOST:PORT/path" (scheme and path optional) for the banner, or "off" for a listener switched off (port -1).
std::string listener_address(const std::string& scheme, const std::string& host, int port, const std::string& path) {
  return port < 0 ? std::string("off") : fmt::format("{}{}:{}{}", scheme, host, port, path);
}

void run_serve(ServeArgs& a) {
  // SIGINT and SIGTERM are taken by sigwait below: block them before any thread starts, so every
  // thread inherits the mask and the signal reaches this one.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  if (a.server.grpc_port < 0 && a.server.http_port < 0)
    fail("--grpc-port and --http-port are both -1: the server would have no way to be asked");
  FileUse().reads("--checkpoint", a.checkpoint).writes("--port-file", a.port_file).check();
  Tagger tagger;
  run_on_passing_thread([&] { tagger = load_tagger(a.checkpoint); });  // so that only the engine's threads compute
  tagger.emulate = a.emulate;
  tagger.images = a.image.merged(tagger);
  validate(tagger.images);
  check_channels(*tagger.model, tagger.images, a.checkpoint);
  const ImageOptions images = tagger.images;
  const std::string what = tagger.describe();
  ServerOptions options = a.server;
  options.limits.system_shared_memory = a.shared_memory == "system";
  InferenceServer server(std::move(tagger), options);
  fmt::print("toptag serve: model '{}' from {} ({}), images {}x{}x{}\n", a.server.model_name, a.checkpoint, what,
             images.channels, images.size, images.size);
  fmt::print("  gRPC     {}\n  HTTP     {}\n  metrics  {}\n",
             listener_address("", a.server.host, server.grpc_port(), ""),
             listener_address("http://", a.server.host, server.http_port(), "/v2"),
             listener_address("http://", a.server.host, server.metrics_port(), "/metrics"));
  const int instances = server.service().engine().instances();
  fmt::print(
      "  dynamic batching: up to {} images, gathered while computing, queue delay up to {} us ({}); {} "
      "instance(s) x {} thread(s)\n",
      a.server.engine.max_batch, a.server.engine.max_queue_delay_us,
      instances > 1 ? "while another instance computes, or for the clients answered last"
                    : "for the clients answered last",
      instances, server.service().engine().threads_per_instance());
  fmt::print("  Ctrl-C or SIGTERM stops\n");
  const BatchingEngine& engine = server.service().engine();
  fmt::print(stderr, "threads: {} instance(s) x {} ({})\n", engine.instances(), engine.threads_per_instance(),
             a.server.engine.threads > 0
                 ? fmt::format("--threads {}", a.server.engine.threads)
                 : fmt::format("--threads 0: {}, shared among the instances", usable_cpus().reason));
  std::fflush(stdout);
  if (!a.port_file.empty()) write_port_file(a.port_file, server);

  int received = 0;
  sigwait(&signals, &received);
  fmt::print("toptag serve: {} received; finishing in-flight requests (send it again to stop at once)\n",
             received == SIGINT ? "SIGINT" : "SIGTERM");
  std::fflush(stdout);
  std::thread([signals, port_file = a.port_file] {  // a second signal: exit now, whatever is in flight
    int again = 0;
    sigwait(&signals, &again);
    if (!port_file.empty()) std::remove(port_file.c_str());
    std::fputs("toptag serve: second signal: exiting without waiting\n", stdout);
    std::fflush(stdout);
    std::_Exit(128 + again);
  })
      .detach();
  server.shutdown();
  const RequestStatistics m = server.service().statistics();
  fmt::print("toptag serve: stopped after {} requests ({} failed), {} inferences in {} batches\n",
             m.success.count + m.fail.count, m.fail.count, m.inference_count, server.service().engine().executions());
  if (!a.port_file.empty()) std::remove(a.port_file.c_str());
}

struct PerfArgs {
  std::string server_url, model = kDefaultModelName, checkpoint, arch, format, csv, plot, duration = "10s",
                          warmup = "1s", input = "images", shared_memory = "none";
  bool local = false, emulate = false, profile = false;
  std::vector<int> concurrency = {1, 2, 4, 8, 16, 32}, threads;
  std::vector<int64_t> batches;
  ImageArgs image;
};

// Timing only: an untrained model quantized in `format`, weights and activations; int8 activation
// ranges are calibrated on a batch of random images (the figures, not the scores, are the point).
void quantize_untrained(Tagger& tagger, const std::string& format) {
  auto config = std::make_shared<QuantizationConfig>(make_quantization(format, format, "masked"));
  const ImageOptions& im = tagger.images;
  bool given = false;
  quantize_tagger(tagger, config, [&]() -> std::optional<Tensor> {
    if (given) return std::nullopt;
    given = true;
    Rng rng(1);
    Tensor images = Tensor::empty({8, im.channels, im.size, im.size});
    for (float& v : images.span()) v = static_cast<float>(rng.uniform());
    return images;
  });
}

void run_perf(const PerfArgs& a) {
  if (a.local == !a.server_url.empty()) fail("give either --server URL or --local --checkpoint C");
  if (a.profile && !a.local) fail("--profile times the layers of in-process inference: use it with --local");
  FileUse().reads("--checkpoint", a.checkpoint).writes("--csv", a.csv).writes("--plot", a.plot).check();
  std::vector<PerfPoint> points;
  if (a.local) {
    if (a.checkpoint.empty() == a.arch.empty()) fail("--local needs --checkpoint, or --arch for an untrained model");
    if (!a.format.empty() && a.arch.empty()) fail("--format quantizes an --arch model; a checkpoint carries its own");
    Tagger tagger;
    if (!a.checkpoint.empty()) {
      tagger = load_tagger(a.checkpoint);
      tagger.emulate = a.emulate;
      tagger.images = a.image.merged(tagger);
    } else {  // timing only: the architecture at the given image size and channels, random weights
      tagger.images = a.image.merged(std::nullopt);
      tagger.model = std::make_unique<ResNet>(ResNetConfig{a.arch, tagger.images.channels, 64, 1024, 2}, 1);
      if (!a.format.empty()) quantize_untrained(tagger, a.format);
      tagger.emulate = a.emulate;
    }
    freeze_for_inference(tagger);
    fmt::print(stderr, "engine: {}\n", tagger.describe_engine());
    fmt::print(stderr, "{}\n", blas_info().summary());
    LocalPerfOptions o;
    o.profile = a.profile;
    if (!a.batches.empty()) o.batches = a.batches;
    const CpuBudget& cpus = usable_cpus();
    if (!a.threads.empty())
      o.threads = a.threads;
    else if (cpus.count > 1)
      o.threads = {1, cpus.count};
    else
      o.threads = {1};
    fmt::print(stderr, "threads: measuring {} ({})\n", fmt::join(o.threads, ", "),
               a.threads.empty() ? fmt::format("1 and the usable CPUs: {}", cpus.reason) : "--threads");
    o.duration_s = parse_duration(a.duration), o.warmup_s = parse_duration(a.warmup);
    if (o.duration_s <= 0) fail("--duration must be longer than zero");
    fmt::print(stderr, "measuring {} in process, {}x{}x{} images, {:g} s per point\n",
               a.checkpoint.empty() ? a.arch + " (untrained)" : a.checkpoint, tagger.images.size, tagger.images.size,
               tagger.images.channels, o.duration_s);
    points = measure_local(tagger, o);
  } else {
    ServerPerfOptions o;
    o.url = a.server_url, o.model = a.model, o.concurrency = a.concurrency, o.input = a.input;
    o.duration_s = parse_duration(a.duration), o.warmup_s = parse_duration(a.warmup);
    if (o.duration_s <= 0) fail("--duration must be longer than zero");
    fmt::print(stderr, "measuring {} model '{}', {:g} s per point (client: {})\n", a.server_url, a.model, o.duration_s,
               blas_info().summary());
    for (int64_t batch : a.batches.empty() ? std::vector<int64_t>{1} : a.batches) {
      o.batch = batch;
      // With --shared-memory system, the same points through shared memory beside the normal ones:
      // the paper's on-premises against remote comparison.
      for (bool shared : a.shared_memory == "system" ? std::vector<bool>{false, true} : std::vector<bool>{false}) {
        o.shared_memory = shared;
        std::vector<PerfPoint> p = measure_server(o);
        points.insert(points.end(), p.begin(), p.end());
      }
    }
  }
  fmt::print("{}", perf_table(points));
  if (!a.csv.empty()) {
    write_perf_csv(a.csv, points);
    fmt::print("wrote {}\n", a.csv);
  }
  if (!a.plot.empty()) {
    plot_throughput(a.plot, points);
    fmt::print("wrote {}\n", a.plot);
  }
}

}  // namespace

void add_serve_commands(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  ServerOptions& s = a->server;
  CLI::App* cmd =
      app.add_subcommand("serve", "Serve a model over the KServe v2 protocol (gRPC and HTTP), as Triton does");
  cmd->add_option("--checkpoint,-c", a->checkpoint, "float or quantized checkpoint")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--model-name", s.model_name, "the model's name in requests")->default_val(kDefaultModelName);
  cmd->add_option("--host", s.host, "address to listen on (127.0.0.1: this machine only)")->default_val("0.0.0.0");
  cmd->add_option("--grpc-port", s.grpc_port, "gRPC port (0: any free port, -1: no gRPC)")
      ->default_val(8001)
      ->check(in_range(-1, 65535));
  cmd->add_option("--http-port", s.http_port, "HTTP/REST port (0: any free port, -1: no HTTP)")
      ->default_val(8000)
      ->check(in_range(-1, 65535));
  cmd->add_option("--metrics-port", s.metrics_port, "Prometheus metrics port (0: any free, -1: none)")
      ->default_val(8002)
      ->check(in_range(-1, 65535));
  cmd->add_option("--max-batch", s.engine.max_batch, "dynamic batching: most images per model execution")
      ->default_val(kDefaultMaxBatch)
      ->check(CLI::Range(1, 4096));
  cmd->add_option(
         "--max-queue-delay-us", s.engine.max_queue_delay_us,
         "dynamic batching: longest wait for a batch to fill while another instance computes, or for the clients "
         "answered by the last execution to come back, in microseconds")
      ->default_val(kDefaultMaxQueueDelayUs)
      ->check(CLI::Range(0, 10000000));
  cmd->add_option("--max-queue", s.engine.max_queue,
                  "batches of up to --max-batch images waiting for an instance; beyond it requests are refused at "
                  "once (gRPC RESOURCE_EXHAUSTED, HTTP 503)")
      ->default_val(256)
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--max-request-jets", s.limits.max_request_jets, "largest batch one request may send")
      ->default_val(4096)
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--shared-memory", a->shared_memory,
                  "system: clients on this machine may register POSIX shared-memory regions for their tensors, as "
                  "with Triton (the server then reads and writes any such object its user may open); none: refused")
      ->check(CLI::IsMember({"none", "system"}))
      ->default_val("system");
  cmd->add_option("--http-stall-timeout", s.http_stall_timeout_s,
                  "seconds an HTTP request body may bring no byte before its connection is dropped (a body that "
                  "keeps moving has 60 s in all)")
      ->default_val(5)
      ->check(in_range(1, 60));
  cmd->add_option("--port-file", a->port_file, "write the bound ports as JSON here once serving (for scripts)");
  cmd->add_option("--instances", s.engine.instances, "model instances computing batches side by side (0: 1)")
      ->default_val(0)
      ->check(CLI::Range(0, 256));
  cmd->add_option("--threads", s.engine.threads,
                  "threads per instance (0: the CPUs this process may use, shared among the instances)")
      ->default_val(0)

      ->check(in_range(0, 1024));
  a->image.add_to(*cmd);
  add_emulate_flag(*cmd, a->emulate);
  cmd->callback([a] { run_serve(*a); });

  auto p = std::make_shared<PerfArgs>();
  CLI::App* perf =
      app.add_subcommand("perf", "Measure throughput and latency of a server (as perf_analyzer) or in process");
  perf->add_option("--server", p->server_url, "grpc://HOST:PORT or http://HOST:PORT");
  perf->add_option("--model", p->model, "model name on the server")->default_val(kDefaultModelName);
  perf->add_option("--concurrency", p->concurrency, "concurrent clients, each with one request in flight")
      ->delimiter(',')
      ->default_str("1,2,4,8,16,32")
      ->check(in_range(1, 4096));
  perf->add_option("--input", p->input, "server input to send: images or constituents")->default_val("images");
  perf->add_option("--shared-memory", p->shared_memory,
                   "system: also measure each point with tensors in system shared memory (server on this machine)")
      ->check(CLI::IsMember({"none", "system"}))
      ->default_val("none");
  perf->add_flag("--local", p->local, "measure in-process inference instead");
  perf->add_flag(
      "--profile", p->profile,
      "--local: also print where each point's time goes, layer by layer (kernel, output, ms, share, GMAC/s); its "
      "figures include the timing (two clock reads and a lock a layer)");
  perf->add_option("--checkpoint,-c", p->checkpoint, "model for --local")->check(CLI::ExistingFile);
  perf->add_option("--arch", p->arch,
                   "--local without a checkpoint: time this architecture untrained (with --image-size, --channels)");
  perf->add_option("--format", p->format,
                   "--arch: quantize the untrained model, weights and activations, to this format (see toptag "
                   "quantize; int8 ranges from random images)");
  perf->add_option("--batch", p->batches,
                   "images per request (server: default 1) or per forward pass (local: default 1,8,32,64)")
      ->delimiter(',')
      ->check(in_range(1, 4096));
  perf->add_option("--threads", p->threads,
                   "local: thread counts to measure (default: 1 and the CPUs this process may use)")
      ->delimiter(',')
      ->check(in_range(0, 1024));
  perf->add_option("--duration", p->duration, "measuring time per point: 10s, 500ms, 2m")->default_val("10s");
  perf->add_option("--warmup", p->warmup, "unmeasured time before each point")->default_val("1s");
  perf->add_option("--csv", p->csv, "also write the table as CSV");
  perf->add_option("--plot", p->plot, "throughput versus clients (.png, .svg, .pdf)");
  p->image.add_to(*perf);
  add_emulate_flag(*perf, p->emulate);
  perf->callback([p] { run_perf(*p); });
}

}  // namespace toptag::apps
