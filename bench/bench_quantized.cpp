// Quantized inference speed against float, as predict and serve run it: ResNet-50 frozen on toptag's
// kernels in float32, and quantized (weights and activations in one format) on the frozen plan, where
// block floating point layers run on the integer kernels (nn/kernels/bfp.h), and on the float
// emulation (--emulate's path). Three cases, each the median of a round's timed calls (--reps at
// 40x40x1 batch 1, a fifth of them at batch 64, half at 224x224x3, at least 3):
//   40x40x1 batch 1 latency, 40x40x1 batch 64 throughput, 224x224x3 batch 1 latency (the paper's).
// The engines take turns, --rounds times, each round starting with the next engine. Prints one table: each figure's
// median over the rounds, and each engine's speed against float's as the median of the rounds' own ratios.
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

// One engine's two models (40x40x1, and 224x224x3 unless skipped), frozen as the engine says.
struct Subject {
  std::string engine;
  std::unique_ptr<ResNet> model_40, model_224;
};

Subject make_subject(const std::string& format, Engine engine, bool paper_size) {
  Rng rng(3);
  Subject s;
  s.engine = engine == Engine::float32 ? "float32" : format + (engine == Engine::plan ? " kernels" : " emulation");
  std::string describe;
  s.model_40 = make_model(1, format, engine, rng, 40, &describe);
  fmt::print("{:<22} {}\n", s.engine, describe);
  if (paper_size) s.model_224 = make_model(3, format, engine, rng, 224, &describe);
  return s;
}

// One round's figures for one engine: 40x40 batch 1 ms, 40x40 batch 64 images/s, 224x224x3 batch 1 ms.
struct Timing {
  double ms_40 = 0, rate_64 = 0, ms_224 = 0;
};

struct Inputs {
  Tensor one_40, batch_40, one_224;
};

Timing measure(const Subject& s, const Inputs& in, int reps) {
  NoGradGuard no_grad;
  Timing t;
  t.ms_40 = 1e3 * median_seconds(reps, [&] { s.model_40->forward(Var(in.one_40)); });
  t.rate_64 = 64 / median_seconds(std::max(3, reps / 5), [&] { s.model_40->forward(Var(in.batch_40)); });
  if (s.model_224)
    t.ms_224 = 1e3 * median_seconds(std::max(3, reps / 2), [&] { s.model_224->forward(Var(in.one_224)); });
  return t;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Quantized ResNet-50 inference speed: integer kernels and float emulation against float"};
  int threads = 0, reps = 20, rounds = 3;
  std::vector<std::string> formats = {"ms-fp8"};
  bool emulation = false, paper_size = true, profile = false;
  app.add_option("--threads", threads, "worker threads (0: all cores)");
  app.add_option("--formats", formats, "formats for weights and activations")->delimiter(',');
  app.add_option("--reps", reps, "timed batch-1 calls per case")->check(CLI::PositiveNumber);
  app.add_option("--rounds", rounds, "rounds in which the engines take turns (figures: medians over them)")
      ->check(CLI::PositiveNumber);
  app.add_flag("--emulation", emulation, "also time the float emulation (slow)");
  app.add_flag("!--no-224", paper_size, "skip the 224x224x3 case");
  app.add_flag("--profile", profile, "also print where batch 64 and 224x224x3 time goes, phase by phase");
  CLI11_PARSE(app, argc, argv);
  set_num_threads(threads);
  const CpuFeatures cpu = detect_cpu();
  fmt::print("cpu  {} ({}{}), {} threads\n", cpu.brand, cpu.avx512f ? "AVX-512" : "AVX2", cpu.avx512vnni ? " VNNI" : "",
             num_threads());

  std::vector<Subject> subjects;
  subjects.push_back(make_subject("", Engine::float32, paper_size));
  for (const std::string& f : formats) {
    subjects.push_back(make_subject(f, Engine::plan, paper_size));
    if (emulation) subjects.push_back(make_subject(f, Engine::emulation, paper_size));
  }
  Rng rng(5);
  const Inputs in{random_images(1, 1, 40, rng), random_images(64, 1, 40, rng),
                  paper_size ? random_images(1, 3, 224, rng) : Tensor()};
  if (profile)
    for (const Subject& s : subjects) {
      NoGradGuard no_grad;
      fmt::print("{}\n", s.engine);
      print_profile("40x40 batch 64", [&] { s.model_40->forward(Var(in.batch_40)); });
      if (s.model_224) print_profile("224x224x3 batch 1", [&] { s.model_224->forward(Var(in.one_224)); });
    }
  // timings[round][subject]: the engines take turns in every round, so a slow minute on a shared
  // machine slows all of them, and each round's ratios compare engines measured side by side.
  std::vector<std::vector<Timing>> timings;
  for (int round = 0; round < rounds; ++round) {
    timings.emplace_back(subjects.size());
    for (size_t k = 0; k < subjects.size(); ++k) {
      const size_t e = (round + k) % subjects.size();
      timings.back()[e] = measure(subjects[e], in, reps);
    }
  }
  // Per engine: the median over rounds of each figure, and of each round's ratio to float32's.
  fmt::print("\n{} round{}; ratios to float32 are the median of the rounds' own ratios\n", rounds,
             rounds > 1 ? "s" : "");
  fmt::print("{:<22} {:>18} {:>22} {:>18}\n", "engine", "40x40 b1 ms", "40x40 b64 images/s", "224x224x3 b1 ms");
  for (size_t e = 0; e < subjects.size(); ++e) {
    std::vector<double> ms_40, rate_64, ms_224, x_40, x_64, x_224;
    for (const std::vector<Timing>& round : timings) {
      const Timing &t = round[e], &base = round.front();
      ms_40.push_back(t.ms_40);
      rate_64.push_back(t.rate_64);
      ms_224.push_back(t.ms_224);
      x_40.push_back(base.ms_40 / t.ms_40);
      x_64.push_back(t.rate_64 / base.rate_64);
      x_224.push_back(t.ms_224 > 0 ? base.ms_224 / t.ms_224 : 0.0);
    }
    fmt::print("{:<22} {:>9.2f} ({:4.2f}x) {:>13.1f} ({:4.2f}x) {:>9.1f} ({:4.2f}x)\n", subjects[e].engine,
               median(ms_40), median(x_40), median(rate_64), median(x_64), median(ms_224), median(x_224));
  }
  return 0;
}
