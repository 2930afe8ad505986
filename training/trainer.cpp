#include "training/trainer.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <memory>
#include <optional>

#include "eval/metrics.h"
#include "io/files.h"
#include "io/progress.h"
#include "nn/check.h"
#include "nn/ops/batchnorm2d.h"
#include "nn/ops/softmax.h"
#include "nn/parallel.h"
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
  StateList trainable;                       // what Adam updates: the gradients averaged over the ranks
  std::unique_ptr<GradientReducer> reducer;  // under MPI
  std::optional<MetricsLog> metrics;         // made by prepare(), from the final configuration
  std::string last, best;                    // checkpoint paths

  explicit Run(const TrainConfig& c)
      : config(c),
        last((fs::path(c.output_dir) / "last.h5").string()),
        best((fs::path(c.output_dir) / "best.h5").string()) {}
};

// What one pass over the training data gave (its loss and step counts are in the run's TrainState).
struct EpochResult {
  bool interrupted = false;
  double allreduce_seconds = 0;  // spent waiting for the gradients' average after backward
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
  const World& world = World::get();
  int64_t seen = quantize_tagger(run.tagger, q, [&]() -> std::optional<Tensor> {
    if (batches++ >= c.calibration_batches) return std::nullopt;
    return run.data->next_images();
  });
  // Each rank calibrated on its slices of the batches: the ranges of the whole batches are the
  // extremes over the ranks (the same keys, in the same order, on every rank).
  for (auto& [name, range] : q->ranges)
    range.min = float(world.min(range.min)), range.max = float(world.max(range.max));
  double images[1] = {static_cast<double>(seen)};
  world.sum(images);
  seen = static_cast<int64_t>(images[0]);
  if (!world.root()) return;
  if (seen > 0) fmt::print(stderr, "calibrated int8 activation ranges on {} jets\n", seen);
  fmt::print(stderr, "quantization-aware training: {}\n", q->describe());
}

// Data, quantization and optimizer for a run whose tagger is loaded. `fresh`: not a resume.
void prepare(Run& run, bool fresh) {
  TrainConfig& c = run.config;
  ResNet& model = *run.tagger.model;
  c.arch = model.config().arch, c.width = model.config().width, c.hidden = model.config().hidden;
  fs::create_directories(c.output_dir);
  World& world = World::get();
  if (world.root()) check_writable_directory(c.output_dir, "the run's checkpoints go there");  // rank 0 alone writes
  if (world.distributed() && c.batch_size % world.size() != 0)
    fail("--batch-size {} is the global batch: it must divide evenly over the {} ranks", c.batch_size, world.size());
  // Unsynchronised batch norms normalise each rank's images alone: one image leaves them its own
  // statistics (and in the last layers a single value per channel). Frozen or folded ones use none.
  const bool local_batch_statistics = !c.sync_batchnorm && !c.head_only() && c.quantize.empty() && !model.folded();
  if (world.distributed() && local_batch_statistics && c.batch_size / world.size() < 2)
    fail(
        "--batch-size {} over {} ranks gives each rank 1 image, and batch norm needs 2 or more per rank: use "
        "--batch-size {} or more, or --sync-batchnorm",
        c.batch_size, world.size(), 2 * world.size());
  run.data = open_training_data(c, model.feature_dim(), world.rank(), world.size());
  if (std::optional<ImageOptions> used = run.data->image_options()) c.images = *used;  // what the files hold
  if (c.features_path.empty()) check_channels(model, c.images, c.train_path);
  if (run.data->batches_per_epoch() < 1) fail("{}: fewer jets than one batch of {}", c.train_path, c.batch_size);
  if (fresh) set_up_quantization(run);
  run.tagger.images = c.images;
  run.tagger.training_config = c.to_json();
  run.metrics.emplace(c);
  run.trainable = c.head_only() ? model.head_state() : model.state();
  run.adam = std::make_unique<Adam>(run.trainable.parameters, AdamOptions{c.lr, 0.9, 0.999, 1e-8, c.weight_decay});
  if (!world.distributed()) return;
  run.reducer = std::make_unique<GradientReducer>(run.trainable, world, static_cast<int64_t>(c.bucket_mb * (1 << 20)));
  if (world.root())
    fmt::print(stderr,
               "data-parallel over {} ranks: global batch {} = {} x {}, {} threads per rank, {} gradients in {} "
               "bucket(s) of up to {:g} MB{}\n",
               world.size(), c.batch_size, world.size(), c.batch_size / world.size(), num_threads(),
               run.trainable.parameters.size(), run.reducer->buckets(), c.bucket_mb,
               c.sync_batchnorm ? ", batch norm synchronised" : "");
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

// The learning rate of the run's step `step` (0-based).
double lr_at(const Run& run, int64_t step) {
  const int64_t per_epoch = run.data->batches_per_epoch();
  return learning_rate(run.config.lr, run.config.schedule, step, per_epoch, per_epoch * run.config.epochs);
}

// The mean loss of the epoch in progress over the steps its sums hold (NaN for none).
double mean_epoch_loss(const TrainState& s) {
  return s.epoch_loss_steps > 0 ? s.epoch_loss_sum / static_cast<double>(s.epoch_loss_steps) : NAN;
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

// Without --sync-batchnorm each rank's batch norms track the statistics of its own slices: before
// validating or saving, every rank takes their mean over the ranks (the running statistics a single
// process would have, to first order), so that all ranks hold one model.
void average_running_statistics(Run& run) {
  const World& world = World::get();
  if (!world.distributed() || run.config.sync_batchnorm || run.config.head_only()) return;
  std::vector<double> all;
  const StateList state = run.tagger.model->state();
  for (const NamedBuffer& b : state.buffers)
    all.insert(all.end(), b.tensor->data(), b.tensor->data() + b.tensor->numel());
  world.sum(all);
  size_t i = 0;
  for (const NamedBuffer& b : state.buffers)
    for (float& v : b.tensor->span()) v = static_cast<float>(all[i++] / world.size());
}

EpochResult run_epoch(Run& run, const std::atomic<bool>* stop) {
  const TrainConfig& c = run.config;
  TrainState& s = run.state;
  run.data->start_epoch(s.epoch, s.step_in_epoch);
  run.tagger.model->set_training(!c.head_only());
  const World& world = World::get();
  Progress progress(fmt::format("epoch {}/{}", s.epoch + 1, c.epochs), run.data->jets_per_epoch(), "jets",
                    world.root() ? stderr : nullptr);
  progress.advance(s.step_in_epoch * c.batch_size);
  int64_t steps = 0;  // in this call
  const double hook_before = run.reducer ? run.reducer->hook_seconds() : 0;
  EpochResult r;
  while (std::optional<Example> batch = run.data->next()) {
    const int64_t global_rows = batch->global_rows;
    if (global_rows < world.size()) continue;  // a last partial batch too small to give every rank a row
    const int64_t local_rows = static_cast<int64_t>(batch->labels.size());
    const double lr = lr_at(run, s.global_step);
    run.adam->set_lr(lr);
    Var loss = softmax_cross_entropy(training_forward(*run.tagger.model, c, batch->inputs), batch->labels);
    run.adam->zero_grad();
    if (run.reducer) {  // the gradients are averaged over the ranks in buckets while backward runs
      run.reducer->start(local_rows);
      backward(loss, [&run](GradSlot& p) { run.reducer->ready(p); });
    } else {
      backward(loss);
    }
    // The loss for the log and the stop request travel in one more small allreduce: every rank
    // stops at the same step.
    double shared[2] = {loss.value().data()[0] * static_cast<double>(local_rows), stop && stop->load() ? 1.0 : 0.0};
    if (run.reducer) {
      r.allreduce_seconds += run.reducer->finish(global_rows);
      world.sum(shared);
    }
    run.adam->step();
    ++s.step_in_epoch;
    ++s.global_step;
    ++steps;
    s.epoch_loss_sum += shared[0] / static_cast<double>(world.distributed() ? global_rows : local_rows);
    ++s.epoch_loss_steps;
    const bool stop_now = shared[1] > 0;
    progress.advance(global_rows, fmt::format("loss {:.4f} lr {:.2g}", mean_epoch_loss(s), lr));
    if (stop_now) {
      progress.finish("interrupted");
      r.interrupted = true;
      return r;
    }
  }
  const double per_step = 1e3 / static_cast<double>(std::max<int64_t>(steps, 1));
  progress.finish(run.reducer ? fmt::format("loss {:.4f}, allreduce: {:.1f} ms/step in backward, {:.1f} waiting",
                                            mean_epoch_loss(s), (run.reducer->hook_seconds() - hook_before) * per_step,
                                            r.allreduce_seconds * per_step)
                              : fmt::format("loss {:.4f}", mean_epoch_loss(s)));
  run.data->report_skipped();
  return r;
}

// Scores the validation set after an epoch: its row of the log, with the lr of its last step and
// its loss and seconds over all its parts (before and after any interrupts).
EpochMetrics evaluate(Run& run) {
  InferenceOptions io;
  io.batch_size = run.config.eval_batch_size;
  io.max_jets = run.config.max_val_jets;
  io.label = "validate";
  const World& world = World::get();
  io.show_progress = world.root();
  if (world.distributed()) io.label = fmt::format("validate (rank 0's share of {})", world.size());
  io.keep_non_finite = true;                        // a diverged run still gets its metrics (NaN) and its report
  io.part = world.rank(), io.parts = world.size();  // each rank scores its share; all get every score
  const InferenceResult v = gather(run.data->validate(*run.tagger.model, io), world);
  const Predictions& p = v.predictions;
  const TrainState& s = run.state;
  EpochMetrics m{s.epoch + 1,
                 s.global_step,
                 lr_at(run, std::max<int64_t>(s.global_step - 1, 0)),
                 mean_epoch_loss(s),
                 v.mean_loss,
                 NAN,
                 NAN,
                 NAN,
                 s.epoch_seconds};
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
  saved.next_epoch();
  if (m.val_auc > s.best_auc) {
    s.best_auc = saved.best_auc = m.val_auc;
    s.best_epoch = saved.best_epoch = m.epoch;
    write_training_checkpoint(run.best, run.tagger, *run.adam, saved, run.config);
  }
  write_training_checkpoint(run.last, run.tagger, *run.adam, saved, run.config);
  try {  // after the checkpoints: a log that cannot be written never costs the epoch
    run.metrics->record(m);
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
  for (TrainState& s = run.state; s.epoch < run.config.epochs; s.next_epoch()) {
    const auto start = Clock::now();
    const EpochResult epoch = run_epoch(run, stop);
    average_running_statistics(run);
    s.epoch_seconds += std::chrono::duration<double>(Clock::now() - start).count();
    if (epoch.interrupted) {
      if (World::get().root()) write_training_checkpoint(run.last, run.tagger, *run.adam, s, run.config);
      result.interrupted = true;
      break;
    }
    const EpochMetrics m = evaluate(run);
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
  run.metrics->load(run.state.epoch);
  const TrainState& s = run.state;
  if (s.epoch_loss_steps < s.step_in_epoch && World::get().root())
    fmt::print(stderr,
               "warning: {} holds no running sums of epoch {} (an older toptag wrote it): epoch {}'s train_loss and "
               "seconds cover only the {} steps after this resume\n",
               checkpoint, s.epoch + 1, s.epoch + 1, run.data->batches_per_epoch() - s.step_in_epoch);
  return train_loop(run, stop);
}

}  // namespace toptag
