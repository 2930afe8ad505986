#include "training/trainer.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <memory>

#include "eval/metrics.h"
#include "io/progress.h"
#include "nn/check.h"
#include "nn/ops/batchnorm2d.h"
#include "nn/ops/softmax.h"
#include "training/batches.h"
#include "training/distributed.h"
#include "training/metrics_log.h"

namespace toptag {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

// Everything a run works on.
struct Run {
  TrainConfig config;
  TrainState state;
  Tagger tagger;
  std::unique_ptr<TrainingData> data;
  std::unique_ptr<Adam> adam;
  StateList trainable;  // what Adam updates: the gradients averaged over the ranks
  MetricsLog metrics;
  std::string last, best;  // checkpoint paths

  explicit Run(const TrainConfig& c)
      : config(c),
        metrics(c.output_dir),
        last((fs::path(c.output_dir) / "last.h5").string()),
        best((fs::path(c.output_dir) / "best.h5").string()) {}
};

// What one pass over the training data gave.
struct EpochResult {
  double mean_loss = 0;
  double lr = 0;  // at the last step
  bool interrupted = false;
  double allreduce_seconds = 0;  // spent averaging gradients over the ranks
};

// The starting weights of a fresh run: --init's checkpoint, or a new model drawn from the seed.
Tagger initial_tagger(const TrainConfig& c) {
  if (!c.init_path.empty()) return load_tagger(c.init_path);
  Tagger t;
  t.model = std::make_unique<ResNet>(ResNetConfig{c.arch, c.images.channels, c.width, c.hidden, 2}, c.seed);
  return t;
}

// Quantization-aware training of a fresh run (--quantize): folds the batch norms before Adam sees
// the parameters; int8 activations keep the --init checkpoint's calibration or are calibrated on
// the first training batches.
void set_up_quantization(Run& run) {
  const TrainConfig& c = run.config;
  if (c.quantize.empty()) return;
  auto q = std::make_shared<QuantizationConfig>(make_quantization(c.quantize, c.quantize_activations, c.ste));
  if (run.tagger.quantization && q->activations && q->activations->kind == FormatKind::int8)
    q->ranges = run.tagger.quantization->ranges;
  run.data->start_epoch(0, 0);
  int64_t batches = 0;
  const int64_t seen = quantize_tagger(run.tagger, q, [&]() -> std::optional<Tensor> {
    if (batches++ >= c.calibration_batches) return std::nullopt;
    return run.data->next_images();
  });
  if (seen > 0) fmt::print(stderr, "calibrated int8 activation ranges on {} jets\n", seen);
  fmt::print(stderr, "quantization-aware training: {}\n", q->describe());
}

// Data, quantization and optimizer for a run whose tagger is loaded. `fresh`: not a resume.
void prepare(Run& run, bool fresh) {
  TrainConfig& c = run.config;
  ResNet& model = *run.tagger.model;
  c.arch = model.config().arch, c.width = model.config().width, c.hidden = model.config().hidden;
  fs::create_directories(c.output_dir);
  const World& world = World::get();
  if (world.distributed() && c.batch_size % world.size() != 0)
    fail("--batch-size {} is the global batch: it must divide evenly over the {} ranks", c.batch_size, world.size());
  run.data = open_training_data(c, model.feature_dim());
  if (std::optional<ImageOptions> used = run.data->image_options()) c.images = *used;  // what the files hold
  if (c.features_path.empty()) check_channels(model, c.images, c.train_path);
  if (run.data->batches_per_epoch() < 1) fail("{}: fewer jets than one batch of {}", c.train_path, c.batch_size);
  if (fresh) set_up_quantization(run);
  run.tagger.images = c.images;
  run.tagger.training_config = c.to_json();
  run.trainable = c.head_only() ? model.head_state() : model.state();
  run.adam = std::make_unique<Adam>(run.trainable.parameters, AdamOptions{c.lr, 0.9, 0.999, 1e-8, c.weight_decay});
}

// The forward pass being trained: the whole model, the head on frozen features, or the head alone
// on a features file.
Var training_forward(ResNet& model, const TrainConfig& c, const Tensor& inputs) {
  if (!c.features_path.empty()) return model.head(Var(inputs));
  if (!c.freeze_backbone) return model.forward(Var(inputs));
  Var features;
  {
    NoGradGuard no_grad;
    features = model.features(Var(inputs));
  }
  return model.head(Var(features.value()));
}

// This rank's rows of a global batch of n: [n*rank/N, n*(rank+1)/N).
Example local_slice(Example global, const World& world) {
  if (!world.distributed()) return global;
  const int64_t n = static_cast<int64_t>(global.labels.size());
  const int64_t begin = n * world.rank() / world.size(), end = n * (world.rank() + 1) / world.size();
  Shape shape = global.inputs.shape();
  shape[0] = end - begin;
  const int64_t per = global.inputs.numel() / std::max<int64_t>(n, 1);
  Example local{Tensor::from(shape, std::span<const float>(global.inputs.data() + begin * per,
                                                           static_cast<size_t>((end - begin) * per))),
                std::vector<int64_t>(global.labels.begin() + begin, global.labels.begin() + end)};
  return local;
}

// The gradient of the global batch's mean loss on every rank: each rank's mean-loss gradient times
// its row count, summed over the ranks (one allreduce over all the gradients), divided by the
// global batch size. Every rank then takes the same Adam step.
void average_gradients(const StateList& trainable, int64_t local_rows, int64_t global_rows, const World& world) {
  std::vector<float> flat;
  for (const auto& p : trainable.parameters) {
    const Tensor& g = p.var->grad();
    flat.insert(flat.end(), g.data(), g.data() + g.numel());
  }
  const float scale_in = static_cast<float>(local_rows);
  for (float& v : flat) v *= scale_in;
  world.sum(flat);
  const float scale_out = 1.0f / static_cast<float>(global_rows);
  size_t offset = 0;
  for (const auto& p : trainable.parameters) {
    Tensor& g = p.var->mutable_grad();
    for (int64_t i = 0; i < g.numel(); ++i) g.data()[i] = flat[offset++] * scale_out;
  }
}

// Every rank must hold the same weights: their sum, in double, compared across the ranks.
void check_weights_agree(const StateList& state, const World& world, int64_t epoch) {
  if (!world.distributed()) return;
  double checksum = 0;
  for (const auto& p : state.parameters) {
    const Tensor& w = p.var->value();
    for (int64_t i = 0; i < w.numel(); ++i) checksum += w.data()[i] * (1.0 + 1e-3 * static_cast<double>(i % 7));
  }
  if (world.max(checksum) != world.min(checksum))
    fail("after epoch {} the ranks' weights differ (checksums {} to {}): the data-parallel run is broken", epoch,
         world.min(checksum), world.max(checksum));
}

EpochResult run_epoch(Run& run, const std::atomic<bool>* stop) {
  const TrainConfig& c = run.config;
  TrainState& s = run.state;
  const int64_t steps_per_epoch = run.data->batches_per_epoch();
  run.data->start_epoch(s.epoch, s.step_in_epoch);
  run.tagger.model->set_training(!c.head_only());
  const World& world = World::get();
  Progress progress(fmt::format("epoch {}/{}", s.epoch + 1, c.epochs), run.data->jets_per_epoch(), "jets",
                    world.root() ? stderr : nullptr);
  progress.advance(s.step_in_epoch * c.batch_size);
  double loss_sum = 0;
  int64_t steps = 0;
  EpochResult r;
  r.lr = c.lr;
  while (std::optional<Example> global = run.data->next()) {
    const int64_t global_rows = static_cast<int64_t>(global->labels.size());
    if (global_rows < world.size()) continue;  // a last partial batch too small to give every rank a row
    const Example batch = local_slice(std::move(*global), world);
    const int64_t local_rows = static_cast<int64_t>(batch.labels.size());
    r.lr = learning_rate(c.lr, c.schedule, s.global_step, steps_per_epoch, steps_per_epoch * c.epochs);
    run.adam->set_lr(r.lr);
    Var loss = softmax_cross_entropy(training_forward(*run.tagger.model, c, batch.inputs), batch.labels);
    run.adam->zero_grad();
    backward(loss);
    // The loss for the log and the stop request travel with the gradients' allreduce: every rank
    // stops at the same step.
    double shared[2] = {loss.value().data()[0] * static_cast<double>(local_rows), stop && stop->load() ? 1.0 : 0.0};
    if (world.distributed()) {
      const auto reduce_start = Clock::now();
      average_gradients(run.trainable, local_rows, global_rows, world);
      world.sum(shared);
      r.allreduce_seconds += std::chrono::duration<double>(Clock::now() - reduce_start).count();
    }
    run.adam->step();
    ++s.step_in_epoch, ++s.global_step, ++steps;
    loss_sum += shared[0] / static_cast<double>(world.distributed() ? global_rows : local_rows);
    const bool stop_now = shared[1] > 0;
    r.mean_loss = loss_sum / static_cast<double>(steps);
    progress.advance(global_rows, fmt::format("loss {:.4f} lr {:.2g}", r.mean_loss, r.lr));
    if (stop_now) {
      progress.finish("interrupted");
      r.interrupted = true;
      return r;
    }
  }
  progress.finish(world.distributed()
                      ? fmt::format("loss {:.4f}, allreduce {:.1f} ms/step", r.mean_loss,
                                    1e3 * r.allreduce_seconds / static_cast<double>(std::max<int64_t>(steps, 1)))
                      : fmt::format("loss {:.4f}", r.mean_loss));
  run.data->report_skipped();
  return r;
}

// Scores the validation set after an epoch.
EpochMetrics evaluate(Run& run, const EpochResult& epoch, double seconds) {
  InferenceOptions io;
  io.batch_size = run.config.eval_batch_size;
  io.max_jets = run.config.max_val_jets;
  io.label = "validate";
  io.show_progress = World::get().root();  // every rank validates the whole set: identical metrics
  io.keep_non_finite = true;               // a diverged run still gets its metrics (NaN) and its report
  const InferenceResult v = run.data->validate(*run.tagger.model, io);
  const Predictions& p = v.predictions;
  EpochMetrics m{
      run.state.epoch + 1, run.state.global_step, epoch.lr, epoch.mean_loss, v.mean_loss, NAN, NAN, NAN, seconds};
  bool weights_finite = true;
  for (const auto& param : run.tagger.model->state().parameters) {
    const Tensor& w = param.var->value();
    weights_finite = weights_finite && all_finite(std::span<const float>(w.data(), static_cast<size_t>(w.numel())));
  }
  if (!weights_finite || !all_finite(p.score)) {  // diverged: NaN metrics, and the run goes on to its report
    fmt::print(stderr, "warning: epoch {} of {}: NaN or inf weights or scores (diverged; try a smaller --lr)\n",
               m.epoch, run.config.output_dir);
    return m;
  }
  m.val_accuracy = accuracy(p.score, p.label);
  m.val_auc = auc(p.score, p.label);
  m.val_rejection_30 = rejection_at(roc_curve(p.score, p.label), 0.3);
  return m;
}

// Logs an epoch's metrics and writes last.h5 (and best.h5 if its AUC is the best so far).
void finish_epoch(Run& run, const EpochMetrics& m) {
  check_weights_agree(run.trainable, World::get(), m.epoch);
  if (!World::get().root()) {  // rank 0 alone logs and writes; the others only keep the state in step
    TrainState& s = run.state;
    if (m.val_auc > s.best_auc) s.best_auc = m.val_auc, s.best_epoch = m.epoch;
    return;
  }
  fmt::print(
      stderr,
      "epoch {}/{}: train loss {:.4f}  val loss {:.4f}  accuracy {:.4f}  AUC {:.4f}  1/eps_B(0.3) {:.1f}  ({})\n",
      m.epoch, run.config.epochs, m.train_loss, m.val_loss, m.val_accuracy, m.val_auc, m.val_rejection_30,
      format_duration(m.seconds));
  TrainState& s = run.state;
  TrainState saved = s;
  saved.epoch = s.epoch + 1;
  saved.step_in_epoch = 0;
  if (m.val_auc > s.best_auc) {
    s.best_auc = saved.best_auc = m.val_auc;
    s.best_epoch = saved.best_epoch = m.epoch;
    write_training_checkpoint(run.best, run.tagger, *run.adam, saved, run.config);
  }
  write_training_checkpoint(run.last, run.tagger, *run.adam, saved, run.config);
  try {  // after the checkpoints: a log that cannot be written never costs the epoch
    run.metrics.record(m);
  } catch (const Error& e) {
    fmt::print(stderr, "warning: epoch {} is saved but its metrics are not logged: {}\n", m.epoch, e.what());
  }
}

TrainResult train_loop(Run& run, const std::atomic<bool>* stop) {
  const World& world = World::get();
  if (world.distributed() && run.config.sync_batchnorm)
    set_batchnorm_cross_batch_sum([&world](std::span<double> sums) { world.sum(sums); });
  struct Unset {
    ~Unset() { set_batchnorm_cross_batch_sum(nullptr); }
  } unset;
  TrainResult result;
  result.last_checkpoint = run.last, result.best_checkpoint = run.best;
  for (TrainState& s = run.state; s.epoch < run.config.epochs; ++s.epoch, s.step_in_epoch = 0) {
    const auto start = Clock::now();
    const EpochResult epoch = run_epoch(run, stop);
    if (epoch.interrupted) {
      if (World::get().root()) write_training_checkpoint(run.last, run.tagger, *run.adam, s, run.config);
      result.interrupted = true;
      break;
    }
    const EpochMetrics m = evaluate(run, epoch, std::chrono::duration<double>(Clock::now() - start).count());
    finish_epoch(run, m);
    result.val_auc = m.val_auc, result.val_accuracy = m.val_accuracy, result.val_rejection_30 = m.val_rejection_30;
  }
  result.state = run.state;
  return result;
}

}  // namespace

TrainResult train(const TrainConfig& config, const std::atomic<bool>* stop) {
  validate(config);
  Run run(config);
  run.tagger = initial_tagger(config);
  prepare(run, true);
  return train_loop(run, stop);
}

TrainResult resume(const std::string& checkpoint, const std::string& output_dir, int64_t epochs,
                   const std::atomic<bool>* stop) {
  TrainConfig config = read_train_config(checkpoint);
  config.output_dir = output_dir;
  if (epochs > 0) config.epochs = epochs;
  validate(config);
  Run run(config);
  run.state = read_train_state(checkpoint);
  run.tagger = load_tagger(checkpoint);
  prepare(run, false);
  read_optimizer(checkpoint, *run.adam);
  run.metrics.load(run.state.epoch);
  return train_loop(run, stop);
}

}  // namespace toptag
