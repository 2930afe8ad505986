#include "training/batches.h"

#include <fmt/format.h>

#include <numeric>

#include "nn/check.h"
#include "nn/random.h"

namespace toptag {

namespace {

// Jets from a reference-format or image file, through the streaming loader.
class JetData : public TrainingData {
 public:
  JetData(const TrainConfig& c, int part, int parts)
      : train_path_(c.train_path),
        batch_size_(c.batch_size),
        train_(c.train_path, c.key),
        val_(c.val_path, c.key),
        images_(train_.image_options(c.images, false, false)),
        loader_(train_, images_, loader_options(c, part, parts)) {
    val_.check_images_match(images_, fmt::format("the training file {}", c.train_path));
  }

  std::optional<ImageOptions> image_options() const override { return images_; }

  int64_t batches_per_epoch() const override { return loader_.batches_per_epoch(); }
  int64_t jets_per_epoch() const override { return loader_.batches_per_epoch() * batch_size_; }
  void start_epoch(int64_t epoch, int64_t skip) override { loader_.start_epoch(epoch, skip); }
  std::optional<Example> next() override {
    std::optional<Batch> b = loader_.next();
    if (!b) return std::nullopt;
    return Example{std::move(b->images), std::move(b->labels), b->whole_rows};
  }
  std::optional<Tensor> next_images() override {
    std::optional<Batch> b = loader_.next();
    return b ? std::optional<Tensor>(std::move(b->images)) : std::nullopt;
  }
  InferenceResult validate(ResNet& model, const InferenceOptions& options) const override {
    return run_inference(model, val_, images_, options);
  }
  void report_skipped() const override { warn_skipped(train_path_, loader_.dropped()); }

 private:
  static LoaderOptions loader_options(const TrainConfig& c, int part, int parts) {
    LoaderOptions lo;
    lo.part = part, lo.parts = parts;
    lo.batch_size = c.batch_size;
    lo.seed = c.seed;
    lo.max_jets = c.max_train_jets;
    lo.drop_last = true;  // a batch of 1 cannot be batch-normalised
    return lo;
  }

  std::string train_path_;
  int64_t batch_size_;
  JetFile train_, val_;
  ImageOptions images_;
  Loader loader_;
};

// Featurizer outputs (toptag features) held in memory; only the head trains on them.
class FeatureData : public TrainingData {
 public:
  FeatureData(const TrainConfig& c, int64_t model_features, int part, int parts)
      : train_(read_features(c.features_path, c.max_train_jets)),
        val_(read_features(c.val_path, c.max_val_jets)),
        batch_(c.batch_size),
        seed_(c.seed),
        part_(part),
        parts_(parts) {
    for (const auto& [set, path] : {std::pair{&train_, c.features_path}, std::pair{&val_, c.val_path}})
      if (set->features.dim(1) != model_features)
        fail("{}: features are {} wide but the model's featurizer gives {}", path, set->features.dim(1),
             model_features);
  }

  int64_t batches_per_epoch() const override { return (rows() + batch_ - 1) / batch_; }
  int64_t jets_per_epoch() const override { return rows(); }
  void start_epoch(int64_t epoch, int64_t skip) override {
    order_.resize(static_cast<size_t>(rows()));
    std::iota(order_.begin(), order_.end(), 0);
    Rng rng = epoch_rng(seed_, RngStream::feature_order, epoch);
    shuffle(std::span(order_), rng);
    pos_ = std::min<size_t>(order_.size(), static_cast<size_t>(skip * batch_));
  }
  std::optional<Example> next() override {
    if (pos_ >= order_.size()) return std::nullopt;
    const int64_t whole = std::min<int64_t>(batch_, static_cast<int64_t>(order_.size() - pos_));
    const auto [first, end] = part_rows(whole, part_, parts_);  // this rank's slice
    const int64_t n = end - first;
    const int64_t F = train_.features.dim(1);
    Example e{Tensor::empty({n, F}), std::vector<int64_t>(static_cast<size_t>(n)), whole};
    for (int64_t i = 0; i < n; ++i) {
      const int64_t row = order_[pos_ + static_cast<size_t>(first + i)];
      std::copy_n(train_.features.data() + row * F, F, e.inputs.data() + i * F);
      e.labels[i] = train_.labels[row];
    }
    pos_ += static_cast<size_t>(whole);
    return e;
  }
  std::optional<Tensor> next_images() override { return std::nullopt; }
  InferenceResult validate(ResNet& model, const InferenceOptions& options) const override {
    return run_head(model, val_, options);
  }

 private:
  int64_t rows() const { return static_cast<int64_t>(train_.labels.size()); }

  FeatureSet train_, val_;
  int64_t batch_;
  uint64_t seed_;
  int part_, parts_;
  std::vector<int64_t> order_;
  size_t pos_ = 0;
};

}  // namespace

std::unique_ptr<TrainingData> open_training_data(const TrainConfig& config, int64_t model_features, int part,
                                                 int parts) {
  if (!config.features_path.empty()) return std::make_unique<FeatureData>(config, model_features, part, parts);
  return std::make_unique<JetData>(config, part, parts);
}

}  // namespace toptag
