#include "training/trainer.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "data/loader.h"
#include "eval/metrics.h"
#include "nn/check.h"
#include "nn/checkpoint.h"
#include "nn/files.h"
#include "nn/ops/softmax.h"
#include "nn/progress.h"
#include "quantize/model.h"
#include "training/inference.h"

namespace toptag {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Configuration as JSON

std::string TrainConfig::to_json() const {
  json j = {{"train", train_path},
            {"val", val_path},
            {"output_dir", output_dir},
            {"features", features_path},
            {"init", init_path},
            {"arch", arch},
            {"width", width},
            {"hidden", hidden},
            {"image_size", images.size},
            {"channels", images.channels},
            {"extent", images.extent},
            {"center", images.center},
            {"rotate", images.rotate},
            {"flip", images.flip},
            {"normalize", images.normalize},
            {"epochs", epochs},
            {"batch_size", batch_size},
            {"eval_batch_size", eval_batch_size},
            {"lr", lr},
            {"weight_decay", weight_decay},
            {"schedule", schedule.kind},
            {"warmup_steps", schedule.warmup_steps},
            {"step_epochs", schedule.step_epochs},
            {"gamma", schedule.gamma},
            {"seed", seed},
            {"max_train_jets", max_train_jets},
            {"max_val_jets", max_val_jets},
            {"freeze_backbone", freeze_backbone},
            {"threads", threads},
            {"quantize", quantize},
            {"quantize_activations", quantize_activations},
            {"ste", ste},
            {"calibration_batches", calibration_batches}};
  return j.dump(2);
}

TrainConfig TrainConfig::from_json(const std::string& text, const std::string& source) {
  TrainConfig c;
  try {
    const json j = json::parse(text);
    c.train_path = j.at("train"), c.val_path = j.at("val"), c.output_dir = j.at("output_dir");
    c.features_path = j.at("features"), c.init_path = j.at("init"), c.arch = j.at("arch");
    c.width = j.at("width"), c.hidden = j.at("hidden");
    c.images.size = j.at("image_size"), c.images.channels = j.at("channels"), c.images.extent = j.at("extent");
    c.images.center = j.at("center"), c.images.rotate = j.at("rotate"), c.images.flip = j.at("flip");
    c.images.normalize = j.at("normalize");
    c.epochs = j.at("epochs"), c.batch_size = j.at("batch_size"), c.eval_batch_size = j.at("eval_batch_size");
    c.lr = j.at("lr"), c.weight_decay = j.at("weight_decay");
    c.schedule.kind = j.at("schedule"), c.schedule.warmup_steps = j.at("warmup_steps");
    c.schedule.step_epochs = j.at("step_epochs"), c.schedule.gamma = j.at("gamma");
    c.seed = j.at("seed"), c.max_train_jets = j.at("max_train_jets"), c.max_val_jets = j.at("max_val_jets");
    c.freeze_backbone = j.at("freeze_backbone"), c.threads = j.at("threads");
    c.quantize = j.value("quantize", ""), c.quantize_activations = j.value("quantize_activations", "");
    c.ste = j.value("ste", "masked"), c.calibration_batches = j.value("calibration_batches", 8);
  } catch (const json::exception& e) {
    fail("{}: cannot read the stored training configuration: {}", source, e.what());
  }
  return c;
}

std::string resume_checkpoint_path(const std::string& p) {
  if (fs::is_directory(p)) return (fs::path(p) / "last.h5").string();
  return p;
}

TrainConfig read_train_config(const std::string& checkpoint) {
  H5Id f = h5_open(checkpoint);
  if (!h5_exists(f.get(), "training")) fail("{}: not a training checkpoint (no /training group)", checkpoint);
  H5Id g = h5_group(f.get(), "training", false);
  std::optional<std::string> text = h5_attr_string(g.get(), "config");
  if (!text) fail("{}: /training has no 'config' attribute", checkpoint);
  return TrainConfig::from_json(*text, checkpoint);
}

std::optional<std::string> checkpoint_training_config(const std::string& checkpoint) {
  H5Id f = h5_open(checkpoint);
  if (h5_exists(f.get(), "training")) {
    H5Id g = h5_group(f.get(), "training", false);
    return h5_attr_string(g.get(), "config");
  }
  return h5_attr_string(f.get(), "training_config");
}

std::optional<ImageOptions> checkpoint_image_options(const std::string& checkpoint) {
  std::optional<std::string> text = checkpoint_training_config(checkpoint);
  if (!text) return std::nullopt;
  return TrainConfig::from_json(*text, checkpoint).images;
}

namespace {

// ---------------------------------------------------------------------------------------------
// Checkpoints

void write_checkpoint(const std::string& path, Tagger& tagger, const Adam& adam, const TrainState& s,
                      const TrainConfig& config) {
  AtomicH5File out(path);
  write_model_state(out.id(), *tagger.model);
  if (tagger.quantization) write_quantization(out.id(), *tagger.model, *tagger.quantization);
  H5Id opt = h5_group(out.id(), "optimizer", true);
  adam.save(opt.get());
  H5Id t = h5_group(out.id(), "training", true);
  h5_set_attr(t.get(), "epoch", s.epoch);
  h5_set_attr(t.get(), "step_in_epoch", s.step_in_epoch);
  h5_set_attr(t.get(), "global_step", s.global_step);
  h5_set_attr(t.get(), "best_auc", s.best_auc);
  h5_set_attr(t.get(), "best_epoch", s.best_epoch);
  h5_set_attr(t.get(), "config", config.to_json());
  out.commit();
}

TrainState read_state(hid_t file, const std::string& path) {
  H5Id t = h5_group(file, "training", false);
  auto get = [&](const char* name) {
    std::optional<int64_t> v = h5_attr_int(t.get(), name);
    if (!v) fail("{}: /training has no '{}' attribute", path, name);
    return *v;
  };
  TrainState s;
  s.epoch = get("epoch"), s.step_in_epoch = get("step_in_epoch"), s.global_step = get("global_step");
  s.best_epoch = get("best_epoch");
  s.best_auc = h5_attr_double(t.get(), "best_auc").value_or(-1);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Where batches come from: streamed images, or featurizer outputs held in memory.

using Example = std::pair<Tensor, std::vector<int64_t>>;

class FeatureBatches {
 public:
  FeatureBatches(const FeatureSet& set, int64_t batch, uint64_t seed) : set_(set), batch_(batch), seed_(seed) {}
  int64_t batches_per_epoch() const { return (static_cast<int64_t>(set_.labels.size()) + batch_ - 1) / batch_; }
  void start(int64_t epoch, int64_t skip) {
    order_.resize(set_.labels.size());
    std::iota(order_.begin(), order_.end(), 0);
    Rng rng(seed_ * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch) + 1);
    for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng.below(i)]);
    pos_ = std::min<size_t>(order_.size(), static_cast<size_t>(skip * batch_));
  }
  std::optional<Example> next() {
    if (pos_ >= order_.size()) return std::nullopt;
    const size_t n = std::min<size_t>(static_cast<size_t>(batch_), order_.size() - pos_);
    const int64_t F = set_.features.dim(1);
    Tensor x = Tensor::empty({static_cast<int64_t>(n), F});
    std::vector<int64_t> labels(n);
    for (size_t i = 0; i < n; ++i) {
      std::copy_n(set_.features.data() + order_[pos_ + i] * F, F, x.data() + static_cast<int64_t>(i) * F);
      labels[i] = set_.labels[order_[pos_ + i]];
    }
    pos_ += n;
    return Example{x, labels};
  }

 private:
  const FeatureSet& set_;
  int64_t batch_;
  uint64_t seed_;
  std::vector<int64_t> order_;
  size_t pos_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Metrics files

struct EpochMetrics {
  int64_t epoch, step;
  double lr, train_loss, val_loss, val_accuracy, val_auc, val_rejection_30, seconds;
};

void append_metrics(const std::string& dir, const EpochMetrics& m) {
  const fs::path csv = fs::path(dir) / "metrics.csv";
  const bool fresh = !fs::exists(csv);
  std::ofstream out(csv, std::ios::app);
  if (fresh) out << "epoch,step,lr,train_loss,val_loss,val_accuracy,val_auc,val_rejection_30,seconds\n";
  out << fmt::format("{},{},{:.6g},{:.6f},{:.6f},{:.6f},{:.6f},{:.4f},{:.1f}\n", m.epoch, m.step, m.lr, m.train_loss,
                     m.val_loss, m.val_accuracy, m.val_auc, m.val_rejection_30, m.seconds);
  out.close();  // the row must be on disk before the CSV is read back
  // metrics.json: the same rows, rewritten whole (atomically) from the CSV.
  std::ifstream in(csv);
  std::string line;
  std::getline(in, line);
  json rows = json::array();
  while (std::getline(in, line)) {
    std::vector<double> v;
    size_t pos = 0;
    while (pos <= line.size()) {
      size_t end = line.find(',', pos);
      if (end == std::string::npos) end = line.size();
      v.push_back(std::stod(line.substr(pos, end - pos)));
      pos = end + 1;
    }
    if (v.size() != 9) continue;
    rows.push_back({{"epoch", static_cast<int64_t>(v[0])},
                    {"step", static_cast<int64_t>(v[1])},
                    {"lr", v[2]},
                    {"train_loss", v[3]},
                    {"val_loss", v[4]},
                    {"val_accuracy", v[5]},
                    {"val_auc", v[6]},
                    {"val_rejection_30", v[7]},
                    {"seconds", v[8]}});
  }
  write_text_atomically((fs::path(dir) / "metrics.json").string(), json{{"epochs", rows}}.dump(2) + "\n");
}

void validate_config(const TrainConfig& c) {
  if (c.epochs < 1) fail("--epochs must be at least 1, got {}", c.epochs);
  if (c.batch_size < 2) fail("--batch-size must be at least 2 (batch normalisation needs it), got {}", c.batch_size);
  if (!(c.lr > 0)) fail("--lr must be positive, got {}", c.lr);
  if (c.weight_decay < 0) fail("--weight-decay must be >= 0, got {}", c.weight_decay);
  if (c.output_dir.empty()) fail("--output-dir is required");
  if (c.features_path.empty() && c.train_path.empty()) fail("--train (or --features) is required");
  if (c.val_path.empty()) fail("--val is required");
  if (!c.features_path.empty() && c.init_path.empty())
    fail("--features trains only the head: --init must name the checkpoint whose featurizer made the features");
  validate(c.schedule);
  validate(c.images);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The training loop

TrainResult train(const TrainConfig& config_in, const std::atomic<bool>* stop, const std::string& resume_from) {
  TrainConfig config = config_in;
  TrainState state;
  Tagger tagger;
  H5Id resume_file;
  if (!resume_from.empty()) {
    resume_file = h5_open(resume_from);
    state = read_state(resume_file.get(), resume_from);
    tagger = load_tagger(resume_from);
  } else if (!config.init_path.empty()) {
    tagger = load_tagger(config.init_path);
  } else {
    tagger.model = std::make_unique<ResNet>(
        ResNetConfig{config.arch, config.images.channels, config.width, config.hidden, 2}, config.seed);
  }
  validate_config(config);
  std::unique_ptr<ResNet>& model = tagger.model;
  const bool quantize_now = resume_from.empty() && !config.quantize.empty();
  if (quantize_now) {
    auto q = std::make_shared<QuantizationConfig>();
    q->weights = Format::parse(config.quantize);
    if (!config.quantize_activations.empty()) q->activations = Format::parse(config.quantize_activations);
    q->ste = parse_ste(config.ste);
    if (tagger.quantization && q->activations && q->activations->kind == FormatKind::int8)
      q->ranges = tagger.quantization->ranges;  // reuse the init checkpoint's calibration
    tagger.quantization = q;
    if (!model->folded()) model->fold_batchnorm();  // before the optimizer sees the parameters
  }
  const ResNetConfig& mc = model->config();
  config.arch = mc.arch, config.width = mc.width, config.hidden = mc.hidden;
  const bool head_only = config.freeze_backbone || !config.features_path.empty();
  if (config.features_path.empty() && mc.in_channels != config.images.channels)
    fail("the model takes {}-channel images but --channels is {}", mc.in_channels, config.images.channels);
  fs::create_directories(config.output_dir);

  StateList trainable = head_only ? model->head_state() : model->state();
  Adam adam(trainable.parameters, AdamOptions{config.lr, 0.9, 0.999, 1e-8, config.weight_decay});
  if (resume_file.valid()) {
    H5Id g = h5_group(resume_file.get(), "optimizer", false);
    adam.load(g.get(), resume_from);
    resume_file.reset();
  }

  // Data.
  std::optional<JetFile> train_file, val_file;
  std::optional<Loader> loader;
  std::optional<FeatureSet> train_features, val_features;
  std::optional<FeatureBatches> feature_batches;
  ImageOptions images = config.images;
  if (config.features_path.empty()) {
    train_file.emplace(config.train_path);
    val_file.emplace(config.val_path);
    images = train_file->image_options(config.images, false, false);
    LoaderOptions lo;
    lo.batch_size = config.batch_size;
    lo.seed = config.seed;
    lo.max_jets = config.max_train_jets;
    lo.drop_last = true;  // a batch of 1 cannot be batch-normalised
    loader.emplace(*train_file, images, lo);
    if (quantize_now) {
      QuantizationConfig& q = *tagger.quantization;
      if (q.activations && q.activations->kind == FormatKind::int8 && q.ranges.empty()) {
        loader->start_epoch(0);
        int64_t batches = 0;
        const int64_t seen = calibrate(*model, q, [&]() -> std::optional<Tensor> {
          if (batches++ >= config.calibration_batches) return std::nullopt;
          std::optional<Batch> b = loader->next();
          return b ? std::optional<Tensor>(b->images) : std::nullopt;
        });
        fmt::print(stderr, "calibrated int8 activation ranges on {} jets\n", seen);
      }
      attach_quantization(*model, tagger.quantization);
      fmt::print(stderr, "quantization-aware training: {}\n", q.describe());
    }
  } else {
    if (quantize_now) attach_quantization(*model, tagger.quantization);
    train_features = read_features(config.features_path, config.max_train_jets);
    val_features = read_features(config.val_path, config.max_val_jets);
    if (train_features->features.dim(1) != model->feature_dim())
      fail("{}: features are {} wide but the model's featurizer gives {}", config.features_path,
           train_features->features.dim(1), model->feature_dim());
    feature_batches.emplace(*train_features, config.batch_size, config.seed);
  }
  const int64_t steps_per_epoch = loader ? loader->batches_per_epoch() : feature_batches->batches_per_epoch();
  if (steps_per_epoch < 1) fail("{}: fewer jets than one batch of {}", config.train_path, config.batch_size);
  const int64_t total_steps = steps_per_epoch * config.epochs;

  const std::string last = (fs::path(config.output_dir) / "last.h5").string();
  const std::string best = (fs::path(config.output_dir) / "best.h5").string();
  TrainResult result;
  result.last_checkpoint = last;
  result.best_checkpoint = best;

  auto forward = [&](const Tensor& input) -> Var {
    if (!config.features_path.empty()) return model->head(Var(input));
    if (!config.freeze_backbone) return model->forward(Var(input));
    Var features;
    {
      NoGradGuard no_grad;
      features = model->features(Var(input));
    }
    return model->head(Var(features.value()));
  };

  auto validate_epoch = [&](double& loss) -> Predictions {
    InferenceOptions io;
    io.batch_size = config.eval_batch_size;
    io.max_jets = config.max_val_jets;
    io.label = "validate";
    if (val_file) {
      InferenceResult r = run_inference(*model, *val_file, images, io);
      loss = r.mean_loss;
      return r.predictions;
    }
    NoGradGuard no_grad;
    Predictions p;
    double sum = 0;
    const Tensor& f = val_features->features;
    for (int64_t start = 0; start < f.dim(0); start += io.batch_size) {
      const int64_t n = std::min(io.batch_size, f.dim(0) - start);
      Tensor x = Tensor::from({n, f.dim(1)}, std::span<const float>(f.data() + start * f.dim(1), n * f.dim(1)));
      std::vector<int64_t> labels(val_features->labels.begin() + start, val_features->labels.begin() + start + n);
      scores_from_logits(model->head(Var(x)).value(), &labels, p.score, sum);
      p.label.insert(p.label.end(), labels.begin(), labels.end());
    }
    loss = sum / static_cast<double>(std::max<int64_t>(1, p.size()));
    return p;
  };

  for (; state.epoch < config.epochs; ++state.epoch, state.step_in_epoch = 0) {
    const auto epoch_start = std::chrono::steady_clock::now();
    if (loader)
      loader->start_epoch(state.epoch, state.step_in_epoch);
    else
      feature_batches->start(state.epoch, state.step_in_epoch);
    model->set_training(!head_only);
    const int64_t jets_per_epoch =
        loader ? steps_per_epoch * config.batch_size : static_cast<int64_t>(train_features->labels.size());
    Progress progress(fmt::format("epoch {}/{}", state.epoch + 1, config.epochs), jets_per_epoch, "jets");
    progress.advance(state.step_in_epoch * config.batch_size);
    double loss_sum = 0;
    int64_t loss_count = 0;
    double lr = config.lr;
    for (;;) {
      std::optional<Example> example;
      if (loader) {
        std::optional<Batch> b = loader->next();
        if (b) example = Example{b->images, b->labels};
      } else {
        example = feature_batches->next();
      }
      if (!example) break;
      lr = learning_rate(config.lr, config.schedule, state.global_step, steps_per_epoch, total_steps);
      adam.set_lr(lr);
      Var loss = softmax_cross_entropy(forward(example->first), example->second);
      adam.zero_grad();
      backward(loss);
      adam.step();
      ++state.step_in_epoch;
      ++state.global_step;
      loss_sum += loss.value().data()[0];
      ++loss_count;
      progress.advance(static_cast<int64_t>(example->second.size()),
                       fmt::format("loss {:.4f} lr {:.2g}", loss_sum / static_cast<double>(loss_count), lr));
      if (stop && stop->load()) {
        progress.finish("interrupted");
        write_checkpoint(last, tagger, adam, state, config);
        result.state = state;
        result.interrupted = true;
        return result;
      }
    }
    progress.finish(fmt::format("loss {:.4f}", loss_sum / static_cast<double>(std::max<int64_t>(1, loss_count))));
    if (loader) warn_skipped(config.train_path, loader->dropped());

    double val_loss = 0;
    const Predictions val = validate_epoch(val_loss);
    const std::vector<RocPoint> roc = roc_curve(val.score, val.label);
    EpochMetrics m{state.epoch + 1,
                   state.global_step,
                   lr,
                   loss_sum / static_cast<double>(std::max<int64_t>(1, loss_count)),
                   val_loss,
                   accuracy(val.score, val.label),
                   auc(val.score, val.label),
                   rejection_at(roc, 0.3),
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_start).count()};
    fmt::print(
        stderr,
        "epoch {}/{}: train loss {:.4f}  val loss {:.4f}  accuracy {:.4f}  AUC {:.4f}  1/eps_B(0.3) {:.1f}  ({})\n",
        m.epoch, config.epochs, m.train_loss, m.val_loss, m.val_accuracy, m.val_auc, m.val_rejection_30,
        format_duration(m.seconds));
    append_metrics(config.output_dir, m);
    result.val_auc = m.val_auc, result.val_accuracy = m.val_accuracy, result.val_rejection_30 = m.val_rejection_30;

    TrainState saved = state;
    saved.epoch = state.epoch + 1;
    saved.step_in_epoch = 0;
    if (m.val_auc > state.best_auc) {
      state.best_auc = saved.best_auc = m.val_auc;
      state.best_epoch = saved.best_epoch = m.epoch;
      write_checkpoint(best, tagger, adam, saved, config);
    }
    write_checkpoint(last, tagger, adam, saved, config);
  }
  result.state = state;
  return result;
}

}  // namespace toptag
