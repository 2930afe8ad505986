// Where a training run's data come from: jets (streamed and turned into images by the loader) or
// featurizer outputs held in memory (train --features: only the head learns). The trainer sees one
// interface for both: shuffled training batches per epoch, and the validation set scored by a model.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "data/loader.h"
#include "tagger/inference.h"
#include "training/config.h"

namespace toptag {

// A labelled batch: images (N, C, H, W), or features (N, F) for a head-only run on a features file.
// Under MPI, this rank's slice of the global batch every rank draws.
struct Example {
  Tensor inputs;
  std::vector<int64_t> labels;
  int64_t global_rows = 0;  // the rows of the global batch (over every rank)
};

class TrainingData {
 public:
  virtual ~TrainingData() = default;

  virtual int64_t batches_per_epoch() const = 0;
  virtual int64_t jets_per_epoch() const = 0;
  // Starts `epoch` (its own shuffled order, drawn from the seed), skipping its first `skip` batches.
  virtual void start_epoch(int64_t epoch, int64_t skip) = 0;
  virtual std::optional<Example> next() = 0;
  // The model's validation predictions and mean loss (eval mode, no tape), identical on every rank:
  // each scores its share of the validation set and the predictions are gathered.
  virtual InferenceResult validate(ResNet& model, const InferenceOptions& options) const = 0;
  // Training batches of images, for int8 calibration (nullopt for features).
  virtual std::optional<Tensor> next_images() = 0;
  // After an epoch: warns about jets skipped for NaN/inf.
  virtual void report_skipped() const {}
  // The images the model trains on (an image file's own size and channels); nullopt for features.
  virtual std::optional<ImageOptions> image_options() const { return std::nullopt; }
};

// Opens the data `config` names for a model with `model_features` features. For jets, the images
// are made with config.images adjusted to a cached image file's own size and channels.
// Data-parallel: this is rank `part` of `parts`; batches are its slices of the global batches.
std::unique_ptr<TrainingData> open_training_data(const TrainConfig& config, int64_t model_features, int part = 0,
                                                 int parts = 1);

}  // namespace toptag
