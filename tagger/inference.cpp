#include "tagger/inference.h"

#include <cmath>
#include <numeric>

#include "io/h5.h"
#include "io/progress.h"
#include "nn/check.h"
#include "tagger/scores.h"

namespace toptag {

namespace {

// This part's rows of `file` in file order; nullopt when the part is empty (more ranks than jets).
std::optional<LoaderOptions> in_file_order(const JetFile& file, const InferenceOptions& o) {
  const int64_t n = o.max_jets > 0 ? std::min(o.max_jets, file.size()) : file.size();
  const auto [begin, end] = part_rows(n, o.part, o.parts, o.batch_size);
  if (begin == end && o.parts > 1) return std::nullopt;
  LoaderOptions l;
  l.batch_size = o.batch_size;
  l.shuffle = false;
  l.first_row = begin;
  l.max_jets = end;
  return l;
}

// Stops before a non-finite output is handed out; `rows` are the jets' rows in `source`.
void check_finite(const Tensor& out, const char* what, const std::vector<int64_t>& rows, const std::string& source,
                  const InferenceOptions& options) {
  if (options.keep_non_finite) return;
  const int64_t bad = first_non_finite_row(out);
  if (bad < 0) return;
  fail(
      "{} gives NaN or inf {} for jet {} of {}: its weights or number format overflow on this input (nothing "
      "was written)",
      options.model, what, rows[static_cast<size_t>(bad)], source);
}

}  // namespace

int64_t first_non_finite_row(const Tensor& out) {
  const int64_t n = out.dim(0), per = n > 0 ? out.numel() / n : 0;
  for (int64_t i = 0; i < n; ++i)
    if (!all_finite(out.span().subspan(static_cast<size_t>(i * per), static_cast<size_t>(per)))) return i;
  return -1;
}

void scores_from_logits(const Tensor& logits, const std::vector<int64_t>* labels, std::vector<float>& scores,
                        double& loss_sum) {
  const int64_t N = logits.dim(0), K = logits.dim(1);
  const Tensor p = class_probabilities(logits);
  for (int64_t n = 0; n < N; ++n) {
    scores.push_back(p.data()[n * K + kTopClass]);
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
  InferenceResult result;
  const std::optional<LoaderOptions> rows = in_file_order(file, options);
  if (!rows) return result;
  Loader loader(file, images, *rows);
  loader.start_epoch(0);
  double loss_sum = 0;
  std::optional<Progress> progress;
  if (options.show_progress) progress.emplace(options.label, loader.rows(), "jets");
  while (std::optional<Batch> batch = loader.next()) {
    // Both stages are checked: the head's ReLU turns a -inf feature into an ordinary 0.
    const Var features = model.features(Var(batch->images));
    check_finite(features.value(), "features", batch->rows, file.path(), options);
    const Var logits = model.head(features);
    check_finite(logits.value(), "logits", batch->rows, file.path(), options);
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
  const std::optional<LoaderOptions> rows = in_file_order(file, options);
  if (!rows) return {};
  Loader loader(file, images, *rows);
  loader.start_epoch(0);
  std::optional<Progress> progress;
  if (options.show_progress) progress.emplace(options.label, loader.rows(), "jets");
  while (std::optional<Batch> batch = loader.next()) {
    Var features = model.features(Var(batch->images));
    check_finite(features.value(), "features", batch->rows, file.path(), options);
    sink(features.value(), batch->labels);
    if (progress) progress->advance(static_cast<int64_t>(batch->labels.size()));
  }
  return loader.dropped();
}

bool is_features_file(const std::string& path) {
  H5Id f = h5_open(path);
  return h5_exists(f.get(), "features");
}

FeatureSet read_features(const std::string& path, int64_t max_rows) {
  H5Id f = h5_open(path);
  if (!h5_exists(f.get(), "features"))
    fail("{}: not a features file (no /features; make one with toptag features)", path);
  FeatureSet set;
  set.path = path;
  set.features = h5_read_tensor(f.get(), "features", path);
  set.labels = h5_read_int64(f.get(), "labels", path);
  if (set.features.rank() != 2 || set.features.dim(0) != static_cast<int64_t>(set.labels.size()))
    fail("{}: /features must be [N, F] with N = {} labels, found {}", path, set.labels.size(),
         set.features.shape().str());
  for (size_t i = 0; i < set.labels.size(); ++i)
    if (set.labels[i] != 0 && set.labels[i] != 1)
      fail("{}: /labels[{}] = {}; labels must be 0 (QCD) or 1 (top)", path, i, set.labels[i]);
  if (const int64_t bad = first_non_finite_row(set.features); bad >= 0)
    fail("{}: /features row {} holds NaN or inf", path, bad);
  if (max_rows > 0 && max_rows < set.features.dim(0)) {
    const int64_t F = set.features.dim(1);
    Tensor head = Tensor::empty({max_rows, F});
    std::copy_n(set.features.data(), max_rows * F, head.data());
    set.features = head;
    set.labels.resize(static_cast<size_t>(max_rows));
  }
  return set;
}

void write_features(const std::string& path, const FeatureSet& set, const std::string& source) {
  AtomicH5File out(path);
  h5_write_tensor(out.id(), "features", set.features);
  h5_write_int64(out.id(), "labels", set.labels);
  h5_set_attr(out.id(), "source", source);
  out.commit();
}

InferenceResult run_head(ResNet& model, const FeatureSet& set, const InferenceOptions& options) {
  const int64_t F = set.features.dim(1);
  if (F != model.feature_dim()) fail("features have {} columns but the model's head takes {}", F, model.feature_dim());
  NoGradGuard no_grad;
  model.set_training(false);
  const int64_t all = options.max_jets > 0 ? std::min(options.max_jets, set.features.dim(0)) : set.features.dim(0);
  const auto [first, n] = part_rows(all, options.part, options.parts, options.batch_size);
  InferenceResult result;
  double loss_sum = 0;
  for (int64_t start = first; start < n; start += options.batch_size) {
    const int64_t m = std::min(options.batch_size, n - start);
    Tensor x = Tensor::empty({m, F});
    std::copy_n(set.features.data() + start * F, m * F, x.data());
    const std::vector<int64_t> labels(set.labels.begin() + start, set.labels.begin() + start + m);
    const Tensor logits = model.head(Var(x)).value();
    std::vector<int64_t> rows(static_cast<size_t>(m));
    std::iota(rows.begin(), rows.end(), start);
    check_finite(logits, "logits", rows, set.path.empty() ? "the features" : set.path, options);
    scores_from_logits(logits, &labels, result.predictions.score, loss_sum);
    result.predictions.label.insert(result.predictions.label.end(), labels.begin(), labels.end());
  }
  result.mean_loss = loss_sum / static_cast<double>(std::max<int64_t>(1, n - first));
  return result;
}

}  // namespace toptag
