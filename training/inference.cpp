#include "training/inference.h"

#include <cmath>

#include "nn/ops/softmax.h"
#include "nn/progress.h"

namespace toptag {

namespace {

LoaderOptions in_file_order(const InferenceOptions& o) {
  LoaderOptions l;
  l.batch_size = o.batch_size;
  l.shuffle = false;
  l.max_jets = o.max_jets;
  return l;
}

}  // namespace

void scores_from_logits(const Tensor& logits, const std::vector<int64_t>* labels, std::vector<float>& scores,
                        double& loss_sum) {
  const int64_t N = logits.dim(0), K = logits.dim(1);
  // The score is nn's softmax, the same function the server applies, so local and served scores agree.
  const Tensor p = softmax(Var(logits)).value();
  for (int64_t n = 0; n < N; ++n) {
    scores.push_back(p.data()[n * K + 1]);
    if (!labels) continue;
    const float* z = logits.data() + n * K;
    double max = z[0];
    for (int64_t k = 1; k < K; ++k) max = std::max<double>(max, z[k]);
    double sum = 0;
    for (int64_t k = 0; k < K; ++k) sum += std::exp(z[k] - max);
    loss_sum += std::log(sum) + max - z[(*labels)[n]];
  }
}

InferenceResult run_inference(ResNet& model, const JetFile& file, const ImageOptions& images,
                              const InferenceOptions& options) {
  NoGradGuard no_grad;
  model.set_training(false);
  Loader loader(file, images, in_file_order(options));
  loader.start_epoch(0);
  InferenceResult result;
  double loss_sum = 0;
  std::optional<Progress> progress;
  if (options.show_progress) progress.emplace(options.label, loader.rows(), "jets");
  while (std::optional<Batch> batch = loader.next()) {
    Var logits = model.forward(Var(batch->images));
    scores_from_logits(logits.value(), &batch->labels, result.predictions.score, loss_sum);
    result.predictions.label.insert(result.predictions.label.end(), batch->labels.begin(), batch->labels.end());
    if (progress) progress->advance(static_cast<int64_t>(batch->labels.size()));
  }
  if (progress) progress->finish();
  result.mean_loss = loss_sum / static_cast<double>(std::max<int64_t>(1, result.predictions.size()));
  result.dropped = loader.dropped();
  return result;
}

NonFiniteReport run_featurizer(ResNet& model, const JetFile& file, const ImageOptions& images,
                               const InferenceOptions& options, const FeatureSink& sink) {
  NoGradGuard no_grad;
  model.set_training(false);
  Loader loader(file, images, in_file_order(options));
  loader.start_epoch(0);
  std::optional<Progress> progress;
  if (options.show_progress) progress.emplace(options.label, loader.rows(), "jets");
  while (std::optional<Batch> batch = loader.next()) {
    Var features = model.features(Var(batch->images));
    sink(features.value(), batch->labels);
    if (progress) progress->advance(static_cast<int64_t>(batch->labels.size()));
  }
  return loader.dropped();
}

}  // namespace toptag
