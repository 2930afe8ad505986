// Throughput and latency, as Triton's perf_analyzer measures them: a number of concurrent clients,
// each sending its next request as soon as the previous one is answered, for a fixed duration after a
// warm-up; and the same figures for in-process inference at given batch sizes and thread counts.
#pragma once

#include <string>
#include <vector>

#include "nn/inference_plan.h"
#include "tagger/tagger.h"
#include "triton/model_config.h"

namespace toptag {

struct LatencyStats {
  int64_t requests = 0, errors = 0;
  double seconds = 0, throughput = 0;  // inferences (images) per second
  double mean_ms = 0, p50_ms = 0, p90_ms = 0, p95_ms = 0, p99_ms = 0;
};
// From per-request latencies in milliseconds, `images` per request, over `seconds`.
LatencyStats summarize(std::vector<double> latencies_ms, int64_t images_per_request, double seconds, int64_t errors);

struct PerfPoint {
  std::string mode;  // "server", "shm" (the server through system shared memory), "local"
  int concurrency = 1, threads = 0;
  int64_t batch = 1;
  LatencyStats stats;
};

struct ServerPerfOptions {
  std::string url, model = kDefaultModelName;
  std::vector<int> concurrency = {1, 2, 4, 8, 16, 32};
  int64_t batch = 1;
  double duration_s = 10, warmup_s = 1;
  std::string input = "images";  // or "constituents"
  // Each client sends and receives through system shared memory (the server on this machine), as
  // SonicTriton does there: points of mode "shm" instead of "server".
  bool shared_memory = false;
};
std::vector<PerfPoint> measure_server(const ServerPerfOptions& options, bool show_progress = true);

struct LocalPerfOptions {
  std::vector<int64_t> batches = {1, 8, 32, 64};
  std::vector<int> threads = {1, 2};
  double duration_s = 10, warmup_s = 1;
  // Also time every layer of the measured runs and print where each point's time goes (layer_table);
  // needs the frozen engine (a quantized model's --emulate runs without it).
  bool profile = false;
};
// Random images of tagger.images' shape.
std::vector<PerfPoint> measure_local(Tagger& tagger, const LocalPerfOptions& options, bool show_progress = true);
// Where `runs` runs of `run_seconds` in all went, layer by layer in forward order: each layer's
// kernel, output shape, milliseconds a run, share of the runs' time and GMAC/s, and what the layers
// leave (the input's layout change, the average pool, the timing's own cost).
std::string layer_table(const std::vector<LayerTime>& layers, int64_t runs, double run_seconds);

std::string perf_table(const std::vector<PerfPoint>& points);
void write_perf_csv(const std::string& path, const std::vector<PerfPoint>& points);
std::vector<PerfPoint> read_perf_csv(const std::string& path);  // what write_perf_csv wrote
// Throughput versus concurrent clients (server points), with gnuplot.
void plot_throughput(const std::string& path, const std::vector<PerfPoint>& points, const std::string& title = "");

double parse_duration(const std::string& text);  // "10s", "500ms", "2m", or plain seconds

}  // namespace toptag
