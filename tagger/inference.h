// Batched inference without the tape: scores, features and the loss on a labelled set.
#pragma once

#include <functional>

#include "data/loader.h"
#include "eval/predictions.h"
#include "nn/resnet.h"

namespace toptag {

struct InferenceOptions {
  int64_t batch_size = 64;
  int64_t max_jets = 0;
  bool show_progress = true;
  std::string label = "predict";
  // A NaN or inf output is an error naming `model` and the jet's row, so that no such score reaches a
  // file. Training's validation keeps them instead: a diverged run still gets its metrics and report.
  std::string model = "the model";
  bool keep_non_finite = false;
  // Only this share of the jets (after max_jets), in file order: the parts of all ranks concatenated
  // are the whole (distributed predict and validation). Parts are cut at batch boundaries, so every
  // jet is scored in the same batch as by one process, and the scores are bitwise the same (unless
  // jets are skipped for NaN/inf: the cut is in file rows, and a skipped jet shifts later batches).
  int part = 0, parts = 1;
};

// The first row of `out` (N, ...) holding a NaN or inf, or -1 when every value is finite.
int64_t first_non_finite_row(const Tensor& out);

struct InferenceResult {
  Predictions predictions;  // score = softmax probability of top
  double mean_loss = 0;     // cross-entropy, when labelled
  NonFiniteReport dropped;
};

// Runs `model` in eval mode over `file` in file order.
InferenceResult run_inference(ResNet& model, const JetFile& file, const ImageOptions& images,
                              const InferenceOptions& options);

// Each row of logits (N, 2) scored: its probability of top (tagger/scores.h); and the summed cross-entropy.
void scores_from_logits(const Tensor& logits, const std::vector<int64_t>* labels, std::vector<float>& scores,
                        double& loss_sum);

// Featurizer outputs (N, feature_dim) for every jet, passed batch by batch to `sink`.
using FeatureSink = std::function<void(const Tensor& features, const std::vector<int64_t>& labels)>;
NonFiniteReport run_featurizer(ResNet& model, const JetFile& file, const ImageOptions& images,
                               const InferenceOptions& options, const FeatureSink& sink);

// A features file (toptag features): /features float32 [N, F], /labels int64 [N].
struct FeatureSet {
  Tensor features;  // (N, F)
  std::vector<int64_t> labels;
  std::string path;  // where it was read from, for messages
};
bool is_features_file(const std::string& path);
FeatureSet read_features(const std::string& path, int64_t max_rows = 0);
void write_features(const std::string& path, const FeatureSet& set, const std::string& source);

// The classifier head alone on featurizer outputs: what a CPU job computes on the features a
// coprocessor service returned.
InferenceResult run_head(ResNet& model, const FeatureSet& set, const InferenceOptions& options);

}  // namespace toptag
