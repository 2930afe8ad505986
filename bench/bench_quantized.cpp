// Quantized inference speed against float, as predict and serve run it: ResNet-50 frozen on toptag's
// kernels in float32, and quantized (weights and activations in one format) on the frozen plan, where
// block floating point layers run on the integer kernels (nn/kernels/bfp.h), and on the float
// emulation (--emulate's path). Three cases, each the median of --reps runs:
//   40x40x1 batch 1 latency, 40x40x1 batch 64 throughput, 224x224x3 batch 1 latency (the paper's).
// Prints one table with each engine's speed against float's, measured in this run.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <memory>
#include <vector>

#include "nn/blas.h"
#include "nn/inference_plan.h"
#include "nn/parallel.h"
#include "nn/profile.h"
#include "nn/resnet.h"
#include "quantize/model.h"

using namespace toptag;
using Clock = std::chrono::steady_clock;

namespace {

Tensor random_images(int64_t n, int64_t channels, int64_t size, Rng& rng) {
  Tensor t = Tensor::empty({n, channels, size, size});
  for (float& v : t.span()) v = static_cast<float>(rng.uniform());
  return t;
}

// Median seconds of one call of fn over `reps` timed calls, after one warm-up call.
template <class Fn>
double median_seconds(int reps, Fn fn) {
  fn();
  std::vector<double> s;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    fn();
    s.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(s.begin(), s.end());
  return s[s.size() / 2];
}

struct Timing {
  std::string engine;
  double ms_40 = 0, rate_64 = 0, ms_224 = 0;
};

enum class Engine { float32, plan, emulation };

// One model per image size, frozen (or left on the emulation) as `engine` says.
std::unique_ptr<ResNet> make_model(int64_t channels, const std::string& format, Engine engine, Rng& rng, int64_t size,
                                   std::string* describe) {
  auto model = std::make_unique<ResNet>(ResNetConfig{"resnet50", channels, 64, 1024, 2}, 1);
  model->set_training(false);
  model->fold_batchnorm();
  if (engine == Engine::float32) {
    model->freeze();
    *describe = model->frozen()->describe();
    return model;
  }
  auto config = std::make_shared<QuantizationConfig>(make_quantization(format, format, "masked"));
  if (config->activations->kind == FormatKind::int8) {
    bool given = false;
    calibrate(*model, *config, [&]() -> std::optional<Tensor> {
      if (given) return std::nullopt;
      given = true;
      return random_images(8, channels, size, rng);
    });
  }
  attach_quantization(*model, config);
  freeze_for_inference(*model, *config);
  if (engine == Engine::plan) {
    const LayerQuantizations layers = plan_layers(*model, *config);
    model->freeze(active_isa(), true, &layers);
    *describe = model->frozen()->describe();
  } else {
    *describe = "float emulation of " + config->describe();
  }
  return model;
}

// Where one call of fn goes, phase by phase (nn/profile.h), over 3 calls.
template <class Fn>
void print_profile(const std::string& what, Fn fn) {
  constexpr int kRuns = 3;
  reset_profile();
  set_profiling(true);
  for (int i = 0; i < kRuns; ++i) {
    ProfileScope run("(rest)");
    fn();
  }
  set_profiling(false);
  double total = 0;
  for (const ProfileEntry& e : profile_entries()) total += e.seconds;
  fmt::print("  where {} goes ({:.1f} ms):\n", what, 1e3 * total / kRuns);
  for (const ProfileEntry& e : profile_entries())
    fmt::print("    {:<20} {:8.2f} ms {:6.1f} %\n", e.name, 1e3 * e.seconds / kRuns, 100 * e.seconds / total);
}

Timing measure(const std::string& format, Engine engine, int reps, bool paper_size, bool profile) {
  Rng rng(3);
  Timing t;
  t.engine = engine == Engine::float32 ? "float32" : format + (engine == Engine::plan ? " kernels" : " emulation");
  std::string describe;
  NoGradGuard no_grad;
  {
    auto model = make_model(1, format, engine, rng, 40, &describe);
    fmt::print("{:<22} {}\n", t.engine, describe);
    const Tensor one = random_images(1, 1, 40, rng), batch = random_images(64, 1, 40, rng);
    t.ms_40 = 1e3 * median_seconds(reps, [&] { model->forward(Var(one)); });
    t.rate_64 = 64 / median_seconds(std::max(3, reps / 5), [&] { model->forward(Var(batch)); });
    if (profile) print_profile("40x40 batch 64", [&] { model->forward(Var(batch)); });
  }
  if (paper_size) {
    auto model = make_model(3, format, engine, rng, 224, &describe);
    const Tensor one = random_images(1, 3, 224, rng);
    t.ms_224 = 1e3 * median_seconds(std::max(3, reps / 2), [&] { model->forward(Var(one)); });
    if (profile) print_profile("224x224x3 batch 1", [&] { model->forward(Var(one)); });
  }
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Quantized ResNet-50 inference speed: integer kernels and float emulation against float"};
  int threads = 0, reps = 20;
  std::vector<std::string> formats = {"ms-fp8"};
  bool emulation = false, paper_size = true, profile = false;
  app.add_option("--threads", threads, "worker threads (0: all cores)");
  app.add_option("--formats", formats, "formats for weights and activations")->delimiter(',');
  app.add_option("--reps", reps, "timed batch-1 calls per case")->check(CLI::PositiveNumber);
  app.add_flag("--emulation", emulation, "also time the float emulation (slow)");
  app.add_flag("!--no-224", paper_size, "skip the 224x224x3 case");
  app.add_flag("--profile", profile, "also print where batch 64 and 224x224x3 time goes, phase by phase");
  CLI11_PARSE(app, argc, argv);
  set_num_threads(threads);
  const CpuFeatures cpu = detect_cpu();
  fmt::print("cpu  {} ({}{}), {} threads\n", cpu.brand, cpu.avx512f ? "AVX-512" : "AVX2", cpu.avx512vnni ? " VNNI" : "",
             num_threads());

  std::vector<Timing> rows{measure("", Engine::float32, reps, paper_size, profile)};
  for (const std::string& f : formats) {
    rows.push_back(measure(f, Engine::plan, reps, paper_size, profile));
    if (emulation) rows.push_back(measure(f, Engine::emulation, reps, paper_size, profile));
  }
  const Timing& base = rows.front();
  fmt::print("\n{:<22} {:>18} {:>22} {:>18}\n", "engine", "40x40 b1 ms", "40x40 b64 images/s", "224x224x3 b1 ms");
  for (const Timing& r : rows)
    fmt::print("{:<22} {:>9.2f} ({:4.2f}x) {:>13.1f} ({:4.2f}x) {:>9.1f} ({:4.2f}x)\n", r.engine, r.ms_40,
               base.ms_40 / r.ms_40, r.rate_64, r.rate_64 / base.rate_64, r.ms_224,
               r.ms_224 > 0 ? base.ms_224 / r.ms_224 : 0.0);
  return 0;
}
