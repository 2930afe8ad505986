// ResNet-50 speed and memory, the figures of issue 2:
//   training images/s at 40x40, batch 64 (forward + backward + Adam)
//   inference images/s at 40x40, batch 64
//   inference latency at batch 1, 40x40 and 224x224
//   peak resident memory
// Reference (same 2-core machine, PyTorch 1.13 CPU, 2 threads): ~90 train img/s, 25-38 ms batch-1
// latency at 40x40, 55 ms at 224x224, ~1.4 GB peak RSS.
#include <fmt/format.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <vector>

#include "nn/ops/softmax.h"
#include "nn/parallel.h"
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

Tensor random_images(int64_t n, int64_t size, Rng& rng) {
  Tensor t = Tensor::empty({n, 1, size, size});
  for (float& v : t.span()) v = static_cast<float>(rng.uniform());
  return t;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ResNet-50 training and inference speed and memory"};
  int threads = 0, train_steps = 5, infer_batches = 5, latency_reps = 20;
  std::string arch = "resnet50";
  app.add_option("--threads", threads, "worker threads (0: all cores)");
  app.add_option("--arch", arch, "architecture");
  app.add_option("--train-steps", train_steps, "timed training steps");
  app.add_option("--infer-batches", infer_batches, "timed inference batches");
  app.add_option("--latency-reps", latency_reps, "timed batch-1 calls per size");
  CLI11_PARSE(app, argc, argv);
  set_num_threads(threads);

  ResNetConfig config;
  config.arch = arch;
  ResNet model(config, 1);
  Rng rng(2);
  fmt::print("{} with 1-channel input: {} parameters, {} threads\n", arch, model.state().parameter_count(),
             num_threads());

  // Training: batch 64 at 40x40, one warm-up step.
  {
    StateList state = model.state();
    Adam adam(state.parameters, AdamOptions{});
    model.set_training(true);
    Tensor images = random_images(64, 40, rng);
    std::vector<int64_t> labels(64);
    for (auto& l : labels) l = static_cast<int64_t>(rng.below(2));
    auto step = [&] {
      Var loss = softmax_cross_entropy(model.forward(Var(images)), labels);
      adam.zero_grad();
      backward(loss);
      adam.step();
    };
    step();
    const auto t0 = Clock::now();
    for (int i = 0; i < train_steps; ++i) step();
    const double s = seconds_since(t0);
    fmt::print("train      40x40 batch 64 : {:8.1f} images/s  ({:.0f} ms/step)\n", 64.0 * train_steps / s,
               1e3 * s / train_steps);
  }

  model.set_training(false);
  NoGradGuard no_grad;
  {
    Tensor images = random_images(64, 40, rng);
    model.forward(Var(images));
    const auto t0 = Clock::now();
    for (int i = 0; i < infer_batches; ++i) model.forward(Var(images));
    const double s = seconds_since(t0);
    fmt::print("inference  40x40 batch 64 : {:8.1f} images/s\n", 64.0 * infer_batches / s);
  }
  for (int64_t size : {40, 224}) {
    Tensor image = random_images(1, size, rng);
    model.forward(Var(image));
    std::vector<double> ms;
    for (int i = 0; i < latency_reps; ++i) {
      const auto t0 = Clock::now();
      model.forward(Var(image));
      ms.push_back(1e3 * seconds_since(t0));
    }
    fmt::print("latency    {}x{} batch 1 : {:8.2f} ms median, {:.2f} ms min\n", size, size, median(ms),
               *std::min_element(ms.begin(), ms.end()));
  }
  fmt::print("peak RSS                  : {:8.0f} MB\n", peak_rss_mb());
  return 0;
}
