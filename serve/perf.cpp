#include "serve/perf.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "eval/plot.h"
#include "io/files.h"
#include "nn/check.h"
#include "nn/parallel.h"
#include "nn/random.h"
#include "serve/client.h"

namespace toptag {

using Clock = std::chrono::steady_clock;

double parse_duration(const std::string& text) {
  try {
    size_t used = 0;
    const double v = std::stod(text, &used);
    const std::string unit = text.substr(used);
    const double seconds = unit.empty() || unit == "s"    ? v
                           : unit == "ms"                 ? v / 1000
                           : unit == "m" || unit == "min" ? v * 60
                                                          : NAN;
    if (seconds >= 0 && seconds <= 86400) return seconds;  // NaN, inf, negative and a day or more: refused
  } catch (const std::exception&) {
  }
  fail("duration '{}' must look like 10s, 500ms or 2m (at most a day)", text);
}

LatencyStats summarize(std::vector<double> ms, int64_t images, double seconds, int64_t errors) {
  LatencyStats s;
  s.requests = static_cast<int64_t>(ms.size());
  s.errors = errors;
  s.seconds = seconds;
  if (ms.empty()) return s;
  std::sort(ms.begin(), ms.end());
  double sum = 0;
  for (double v : ms) sum += v;
  // Nearest rank: the smallest latency that at least a fraction f of the requests did not exceed.
  auto q = [&](double f) {
    const auto rank = static_cast<size_t>(std::ceil(f * static_cast<double>(ms.size())));
    return ms[std::clamp<size_t>(rank, 1, ms.size()) - 1];
  };
  s.mean_ms = sum / static_cast<double>(ms.size());
  s.p50_ms = q(0.5), s.p90_ms = q(0.9), s.p95_ms = q(0.95), s.p99_ms = q(0.99);
  s.throughput = static_cast<double>(s.requests * images) / seconds;
  return s;
}

namespace {

std::vector<float> random_values(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = static_cast<float>(rng.uniform() * 0.01);
  return v;
}

}  // namespace

std::vector<PerfPoint> measure_server(const ServerPerfOptions& o, bool show_progress) {
  std::unique_ptr<InferenceClient> probe = InferenceClient::connect(o.url, o.model);
  if (!probe->ready()) fail("{}: model '{}' is not ready (is the server running?)", o.url, o.model);
  const RemoteModel meta = probe->metadata();
  const RemoteTensor* input = meta.input(o.input);
  if (!input) fail("{}: model '{}' has no input '{}'", o.url, o.model, o.input);
  std::vector<int64_t> shape = input->shape;
  shape[0] = o.batch;
  int64_t count = 1;
  for (int64_t d : shape) {
    if (d < 0) fail("{}: input '{}' has a variable dimension besides the batch", o.url, o.input);
    count *= d;
  }
  // Triton refuses a request of more jets than the model's max_batch_size; so does this, before
  // measuring. A server without Triton's model_configuration extension is not asked.
  int64_t max_batch = 0;
  try {
    max_batch = probe->max_batch();
  } catch (const ClientError&) {
  }
  if (max_batch > 0 && o.batch > max_batch)
    fail("{}: model '{}' takes at most {} jets per request (its ModelConfig's max_batch_size); --batch is {}", o.url,
         o.model, max_batch, o.batch);
  // Jet-image-like sparse inputs are not needed for timing: the network's cost does not depend on values.
  const std::vector<float> values = random_values(count, 1);
  std::vector<PerfPoint> points;
  for (int concurrency : o.concurrency) {
    if (concurrency < 1) fail("--concurrency values must be >= 1");
    std::vector<std::unique_ptr<InferenceClient>> clients;
    for (int c = 0; c < concurrency; ++c) {
      clients.push_back(InferenceClient::connect(o.url, o.model));
      // The probabilities (batch x 2) and room to spare.
      if (o.shared_memory)
        clients.back()->use_shared_memory(values.size() * 4, static_cast<size_t>(o.batch) * 8 + 4096);
    }
    std::atomic<bool> measuring{false}, stop{false};
    std::atomic<int64_t> errors{0};
    std::mutex mutex;
    std::vector<double> latencies;
    std::vector<std::thread> threads;
    for (int c = 0; c < concurrency; ++c)
      threads.emplace_back([&, c] {
        std::vector<double> mine;
        while (!stop.load()) {
          const auto t0 = Clock::now();
          try {
            clients[c]->infer(o.input, shape, values, false);
          } catch (const Error&) {
            if (measuring.load()) ++errors;
            continue;
          }
          if (measuring.load()) mine.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        }
        std::lock_guard lock(mutex);
        latencies.insert(latencies.end(), mine.begin(), mine.end());
      });
    std::this_thread::sleep_for(std::chrono::duration<double>(o.warmup_s));
    measuring = true;
    const auto t0 = Clock::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(o.duration_s));
    measuring = false;
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    stop = true;
    for (std::thread& t : threads) t.join();
    PerfPoint p{o.shared_memory ? "shm" : "server", concurrency, 0, o.batch,
                summarize(latencies, o.batch, seconds, errors.load())};
    if (show_progress)
      fmt::print(stderr, "concurrency {:>3}{}: {:8.1f} inferences/s, p50 {:.2f} ms, p99 {:.2f} ms\n", concurrency,
                 o.shared_memory ? " (shared memory)" : "", p.stats.throughput, p.stats.p50_ms, p.stats.p99_ms);
    points.push_back(p);
  }
  return points;
}

std::vector<PerfPoint> measure_local(Tagger& tagger, const LocalPerfOptions& o, bool show_progress) {
  const int image_size = tagger.images.size;
  ResNet& model = *tagger.model;
  model.set_training(false);
  const FrozenResNet* plan = o.profile ? model.frozen() : nullptr;
  if (o.profile && !plan)
    fail("--profile times the layers of the frozen engine; a quantized model's --emulate runs without it");
  std::vector<PerfPoint> points;
  for (int threads : o.threads) {
    set_num_threads(threads);
    for (int64_t batch : o.batches) {
      if (batch < 1) fail("--batch values must be >= 1");
      const Shape shape{batch, model.config().in_channels, image_size, image_size};
      const std::vector<float> values = random_values(shape.numel(), 2);
      const Tensor images = Tensor::from(shape, values);
      NoGradGuard no_grad;
      std::vector<double> ms;
      const auto warm_end = Clock::now() + std::chrono::duration<double>(o.warmup_s);
      do model.forward(Var(images));
      while (Clock::now() < warm_end);
      if (plan) plan->time_layers(true);
      const auto t0 = Clock::now();
      while (std::chrono::duration<double>(Clock::now() - t0).count() < o.duration_s) {
        const auto s = Clock::now();
        model.forward(Var(images));
        ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - s).count());
      }
      PerfPoint p{"local", 1, num_threads(), batch,
                  summarize(ms, batch, std::chrono::duration<double>(Clock::now() - t0).count(), 0)};
      if (show_progress)
        fmt::print(stderr, "local {} thread(s), batch {:>3}: {:8.1f} images/s, p50 {:.2f} ms\n", p.threads, batch,
                   p.stats.throughput, p.stats.p50_ms);
      if (plan) {
        const std::vector<LayerTime> layers = plan->layer_times();
        plan->time_layers(false);
        double run_ms = 0;
        for (double m : ms) run_ms += m;
        fmt::print("\nwhere the time goes: {} thread(s), batch {}\n{}", p.threads, batch,
                   layer_table(layers, static_cast<int64_t>(ms.size()), run_ms / 1e3));
      }
      points.push_back(p);
    }
  }
  set_num_threads(0);
  return points;
}

std::string layer_table(const std::vector<LayerTime>& layers, int64_t runs, double run_seconds) {
  if (runs <= 0 || run_seconds <= 0) return "no runs timed\n";
  size_t name_width = 5, kernel_width = 6, output_width = 6;
  for (const LayerTime& t : layers) {
    name_width = std::max(name_width, t.layer.size());
    kernel_width = std::max(kernel_width, t.kernel.size());
    output_width = std::max(output_width, t.output.size());
  }
  const double per_run = 1e3 / static_cast<double>(runs);  // seconds over the runs -> ms a run
  std::string out = fmt::format("{} runs of {:.2f} ms on average; GMAC/s counts a direct convolution's multiply-adds\n",
                                runs, run_seconds * per_run);
  out += fmt::format("{:<{}}  {:<{}}  {:<{}}  {:>9}  {:>6}  {:>7}\n", "layer", name_width, "kernel", kernel_width,
                     "output", output_width, "ms a run", "share", "GMAC/s");
  double layers_seconds = 0;
  for (const LayerTime& t : layers) {
    layers_seconds += t.seconds;
    const std::string rate = t.macs > 0 && t.seconds > 0 ? fmt::format("{:.1f}", t.macs / t.seconds / 1e9) : "-";
    out += fmt::format("{:<{}}  {:<{}}  {:<{}}  {:>9.3f}  {:>5.1f}%  {:>7}\n", t.layer, name_width, t.kernel,
                       kernel_width, t.output, output_width, t.seconds * per_run, 100 * t.seconds / run_seconds, rate);
  }
  const double rest = std::max(0.0, run_seconds - layers_seconds);
  out += fmt::format("{:<{}}  {:>9.3f}  {:>5.1f}%\n", "the rest (input layout change, average pool, timing)",
                     name_width + kernel_width + output_width + 4, rest * per_run, 100 * rest / run_seconds);
  return out;
}

std::string perf_table(const std::vector<PerfPoint>& points) {
  std::string out =
      fmt::format("{:<7} {:>11} {:>7} {:>6} {:>14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}\n", "mode", "concurrency",
                  "threads", "batch", "inferences/s", "mean ms", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "errors");
  for (const PerfPoint& p : points)
    out += fmt::format("{:<7} {:>11} {:>7} {:>6} {:>14.1f} {:>9.2f} {:>9.2f} {:>9.2f} {:>9.2f} {:>9.2f} {:>7}\n",
                       p.mode, p.concurrency, p.threads == 0 ? std::string("-") : std::to_string(p.threads), p.batch,
                       p.stats.throughput, p.stats.mean_ms, p.stats.p50_ms, p.stats.p90_ms, p.stats.p95_ms,
                       p.stats.p99_ms, p.stats.errors);
  return out;
}

void write_perf_csv(const std::string& path, const std::vector<PerfPoint>& points) {
  std::string text = "mode,concurrency,threads,batch,throughput,mean_ms,p50_ms,p90_ms,p95_ms,p99_ms,requests,errors\n";
  for (const PerfPoint& p : points)
    text += fmt::format("{},{},{},{},{:.3f},{:.4f},{:.4f},{:.4f},{:.4f},{:.4f},{},{}\n", p.mode, p.concurrency,
                        p.threads, p.batch, p.stats.throughput, p.stats.mean_ms, p.stats.p50_ms, p.stats.p90_ms,
                        p.stats.p95_ms, p.stats.p99_ms, p.stats.requests, p.stats.errors);
  write_text_atomically(path, text);
}

std::vector<PerfPoint> read_perf_csv(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot read", path);
  std::string line;
  std::getline(in, line);
  if (line.rfind("mode,concurrency,threads,batch,throughput", 0) != 0) fail("{}: not a toptag perf CSV", path);
  std::vector<PerfPoint> points;
  for (int row = 2; std::getline(in, line); ++row) {
    std::vector<std::string> f;
    std::stringstream ss(line);
    for (std::string cell; std::getline(ss, cell, ',');) f.push_back(cell);
    if (f.size() != 12) fail("{}: line {} has {} fields, expected 12", path, row, f.size());
    try {
      PerfPoint p;
      p.mode = f[0], p.concurrency = std::stoi(f[1]), p.threads = std::stoi(f[2]), p.batch = std::stoll(f[3]);
      LatencyStats& s = p.stats;
      s.throughput = std::stod(f[4]), s.mean_ms = std::stod(f[5]), s.p50_ms = std::stod(f[6]);
      s.p90_ms = std::stod(f[7]), s.p95_ms = std::stod(f[8]), s.p99_ms = std::stod(f[9]);
      s.requests = std::stoll(f[10]), s.errors = std::stoll(f[11]);
      points.push_back(p);
    } catch (const std::exception&) {
      fail("{}: line {} is not a row of numbers", path, row);
    }
  }
  return points;
}

void plot_throughput(const std::string& path, const std::vector<PerfPoint>& points, const std::string& title) {
  XY served, shared;
  double best_local = 0;
  for (const PerfPoint& p : points) {
    if (p.mode == "server")
      served.emplace_back(p.concurrency, p.stats.throughput);
    else if (p.mode == "shm")
      shared.emplace_back(p.concurrency, p.stats.throughput);
    else
      best_local = std::max(best_local, p.stats.throughput);
  }
  if (served.empty() && shared.empty()) fail("{}: no server measurements to plot", path);
  std::string script =
      "set logscale x 2\nset grid\nset key top left\nset yrange [0:*]\n"
      "set xlabel 'concurrent clients (one jet per request)'\nset ylabel 'throughput (inferences/s)'\n";
  if (!title.empty()) script += "set title " + gnuplot_string(title) + "\n";
  std::vector<std::string> curves;
  std::string data;
  if (!served.empty()) {
    curves.push_back("'-' with linespoints linewidth 2 pointtype 7 title 'toptag serve'");
    data += gnuplot_data(served);
  }
  if (!shared.empty()) {
    curves.push_back("'-' with linespoints linewidth 2 pointtype 5 title 'toptag serve, shared memory'");
    data += gnuplot_data(shared);
  }
  if (best_local > 0)
    curves.push_back(fmt::format("{} with lines dashtype 2 linewidth 2 title 'best local batched'", best_local));
  render_plot(path, 900, 600, script + "plot " + fmt::format("{}", fmt::join(curves, ", ")) + "\n" + data);
}

}  // namespace toptag
