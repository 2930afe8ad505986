// ResNet-50 speed and memory, and how close they come to this machine's GEMM roofline:
//   the BLAS kernel in use and its measured sgemm GFLOP/s (the peak we measure against)
//   the model's FLOPs per image (counted in gemm(), forward and training step)
//   training images/s at 40x40, batch 64 (forward + backward + Adam), with the fraction of peak
//   inference images/s at 40x40, batch 64, with the fraction of peak (folded and frozen, as predict runs)
//   inference latency at batch 1: 40x40x1 and the paper's 224x224x3
//   peak resident memory after training
// --profile adds where a training step's time goes, phase by phase (nn/profile.h).
// The PyTorch reference for the same jobs is bench/torch_resnet.py; bench/compare.sh runs both, and ONNX
// Runtime on toptag's export (bench/ort_resnet.js), and prints one table of toptag's speed-ups.
#include <fmt/format.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <vector>

#include "nn/blas.h"
#include "nn/gemm.h"
#include "nn/inference_plan.h"
#include "nn/ops/softmax.h"
#include "nn/parallel.h"
#include "nn/profile.h"
#include "nn/resnet.h"
#include "training/adam.h"

using namespace toptag;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

Tensor random_images(int64_t n, int64_t channels, int64_t size, Rng& rng) {
  Tensor t = Tensor::empty({n, channels, size, size});
  for (float& v : t.span()) v = static_cast<float>(rng.uniform());
  return t;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The best sgemm rate of square products (n = 1024, 2048): the roofline the model is judged against.
double measured_sgemm_gflops() {
  double best = 0;
  for (int64_t n : {1024, 2048}) {
    Tensor a = Tensor::full({n, n}, 0.5f), b = Tensor::full({n, n}, 0.25f), c = Tensor::empty({n, n});
    gemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);  // warm-up
    for (int rep = 0; rep < 3; ++rep) {
      const auto t0 = Clock::now();
      gemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
      best = std::max(best, 2.0 * n * n * n / seconds_since(t0) * 1e-9);
    }
  }
  return best;
}

struct TrainJob {
  ResNet& model;
  Adam adam;
  Tensor images;
  std::vector<int64_t> labels;

  void step() {
    Var logits;
    {
      ProfileScope profile("forward (rest)");
      logits = model.forward(Var(images));
    }
    Var loss = softmax_cross_entropy(logits, labels);
    adam.zero_grad();
    {
      ProfileScope profile("backward (rest)");
      backward(loss);
    }
    adam.step();
  }
};

// Runs `work` `steps` times with profiling on and prints where the time went.
template <typename F>
void print_profile(const char* what, int steps, F work) {
  reset_profile();
  set_profiling(true);
  for (int i = 0; i < steps; ++i) {
    ProfileScope step("(rest)");
    work();
  }
  set_profiling(false);
  const std::vector<ProfileEntry> entries = profile_entries();
  double total = 0;
  for (const ProfileEntry& e : entries) total += e.seconds;
  fmt::print("\nwhere {} goes ({} runs profiled, {:.1f} ms each):\n", what, steps, 1e3 * total / steps);
  for (const ProfileEntry& e : entries)
    fmt::print("  {:<20} {:8.2f} ms {:6.1f} %  {:6.0f} calls\n", e.name, 1e3 * e.seconds / steps,
               100 * e.seconds / total, static_cast<double>(e.calls) / steps);
  fmt::print("\n");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ResNet-50 training and inference speed and memory, against the machine's GEMM roofline"};
  int threads = 0, train_steps = 5, infer_batches = 5, latency_reps = 20;
  std::string arch = "resnet50";
  bool profile = false;
  ActivationLayout layout = ActivationLayout::nhwc;
  app.add_option("--threads", threads, "worker threads (0: all cores)");
  app.add_option("--layout", layout, "the training layout: nhwc (channels-last, the default) or nchw")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, ActivationLayout>{{"nhwc", ActivationLayout::nhwc}, {"nchw", ActivationLayout::nchw}}));
  app.add_option("--arch", arch, "architecture");
  app.add_option("--train-steps", train_steps, "timed training steps")->check(CLI::PositiveNumber);
  app.add_option("--infer-batches", infer_batches, "timed inference batches")->check(CLI::PositiveNumber);
  app.add_option("--latency-reps", latency_reps, "timed batch-1 calls per size")->check(CLI::PositiveNumber);
  app.add_flag("--profile", profile, "also time each phase of a training step (a separate run of the steps)");
  CLI11_PARSE(app, argc, argv);
  set_num_threads(threads);

  const CpuFeatures cpu = detect_cpu();
  fmt::print("cpu        {} ({}), {} threads\n", cpu.brand, cpu.avx512f ? "AVX-512" : "no AVX-512", num_threads());
  fmt::print("blas       {}\n", blas_info().summary());
  fmt::print("gemm       {}\n", gemm_choice().reason);
  const double peak = measured_sgemm_gflops();
  fmt::print("sgemm peak: {:8.1f} GFLOP/s (best of n = 1024, 2048)\n", peak);

  ResNetConfig config;
  config.arch = arch;
  ResNet model(config, 1);
  model.set_layout(layout);
  Rng rng(2);
  fmt::print("model      {} with 1-channel input, {} parameters\n", arch, model.state().parameter_count());

  // Training: batch 64 at 40x40, one warm-up step (which also counts the FLOPs of a step).
  constexpr int64_t kBatch = 64, kSize = 40;
  TrainJob job{model, Adam(model.state().parameters, AdamOptions{}), random_images(kBatch, 1, kSize, rng), {}};
  for (int64_t i = 0; i < kBatch; ++i) job.labels.push_back(static_cast<int64_t>(rng.below(2)));
  model.set_training(true);
  const int64_t flops_before = gemm_flops();
  job.step();
  const double train_flops = static_cast<double>(gemm_flops() - flops_before) / kBatch;
  auto t0 = Clock::now();
  for (int i = 0; i < train_steps; ++i) job.step();
  double s = seconds_since(t0);
  const double train_rate = kBatch * train_steps / s;
  fmt::print(
      "train      40x40 batch 64 : {:8.1f} images/s  ({:.0f} ms/step, {:.2f} GFLOP/image, {:.0f} GFLOP/s = "
      "{:.0f}% of sgemm peak)\n",
      train_rate, 1e3 * s / train_steps, train_flops * 1e-9, train_rate * train_flops * 1e-9,
      100 * train_rate * train_flops * 1e-9 / peak);
  fmt::print("peak RSS   after training : {:8.0f} MB\n", peak_rss_mb());
  if (profile) print_profile("a training step (40x40, batch 64)", train_steps, [&] { job.step(); });

  // Inference as toptag predict and serve run it: eval mode, batch norms folded into the convs, the
  // model frozen (weights packed for toptag's own kernels, nn/inference_plan.h). The FLOPs are
  // counted by one pass of the autograd path, whose GEMMs count them.
  model.set_training(false);
  model.fold_batchnorm();
  NoGradGuard no_grad;
  {
    Tensor images = random_images(kBatch, 1, kSize, rng);
    const int64_t before = gemm_flops();
    model.forward(Var(images));
    const double flops = static_cast<double>(gemm_flops() - before) / kBatch;
    model.freeze();
    fmt::print("engine     {}\n", model.frozen()->describe());
    model.forward(Var(images));  // warm-up
    t0 = Clock::now();
    for (int i = 0; i < infer_batches; ++i) model.forward(Var(images));
    s = seconds_since(t0);
    const double rate = kBatch * infer_batches / s;
    fmt::print(
        "inference  40x40 batch 64 : {:8.1f} images/s  ({:.2f} GFLOP/image, {:.0f} GFLOP/s = {:.0f}% of sgemm "
        "peak)\n",
        rate, flops * 1e-9, rate * flops * 1e-9, 100 * rate * flops * 1e-9 / peak);
  }
  ResNetConfig paper = config;
  paper.in_channels = 3;
  ResNet model3(paper, 1);
  model3.set_training(false);
  model3.fold_batchnorm();
  model3.freeze();
  for (auto [net, channels, size] : {std::tuple{&model, 1, 40}, std::tuple{&model3, 3, 224}}) {
    Tensor image = random_images(1, channels, size, rng);
    net->forward(Var(image));
    std::vector<double> ms;
    for (int i = 0; i < latency_reps; ++i) {
      const auto t = Clock::now();
      net->forward(Var(image));
      ms.push_back(1e3 * seconds_since(t));
    }
    fmt::print("latency    {}x{}x{} batch 1 : {:8.2f} ms median, {:.2f} ms min\n", size, size, channels, median(ms),
               *std::min_element(ms.begin(), ms.end()));
    if (profile && size == 224)
      print_profile("a 224x224x3 batch-1 inference", latency_reps, [&] { net->forward(Var(image)); });
  }
  return 0;
}
