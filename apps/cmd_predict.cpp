// toptag predict | features: batched inference without the tape.
#include <fmt/format.h>

#include "apps/commands.h"
#include "apps/image_options.h"
#include "nn/check.h"
#include "quantize/model.h"
#include "training/inference.h"

namespace toptag::apps {

namespace {

struct PredictArgs {
  std::string checkpoint, input, output;
  ImageArgs image;
  int64_t batch_size = 256, max_jets = 0;
  int threads = 0;
};

void report_dropped(const std::string& path, const NonFiniteReport& d) {
  if (d.count > 0)
    fmt::print(stderr, "toptag: warning: {}: skipped {} jets holding NaN or inf (first at row {})\n", path, d.count,
               d.first_row);
}

void run_predict(const PredictArgs& a) {
  apply_threads(a.threads);
  Tagger tagger = load_tagger(a.checkpoint);
  ResNet* model = tagger.model.get();
  JetFile file(a.input);
  ImageArgs image = a.image;
  if (image.channels_option->count() == 0) image.options.channels = static_cast<int>(model->config().in_channels);
  InferenceOptions io;
  io.batch_size = a.batch_size;
  io.max_jets = a.max_jets;
  InferenceResult r = run_inference(*model, file, image.resolve(file), io);
  report_dropped(a.input, r.dropped);
  write_predictions(a.output, r.predictions);
  fmt::print("wrote {} predictions to {}\n", r.predictions.size(), a.output);
}

void run_features(const PredictArgs& a) {
  apply_threads(a.threads);
  Tagger tagger = load_tagger(a.checkpoint);
  ResNet* model = tagger.model.get();
  JetFile file(a.input);
  ImageArgs image = a.image;
  if (image.channels_option->count() == 0) image.options.channels = static_cast<int>(model->config().in_channels);
  InferenceOptions io;
  io.batch_size = a.batch_size;
  io.max_jets = a.max_jets;
  io.label = "features";
  std::vector<float> features;
  std::vector<int64_t> labels;
  NonFiniteReport dropped = run_featurizer(*model, file, image.resolve(file), io,
                                           [&](const Tensor& f, const std::vector<int64_t>& l) {
                                             features.insert(features.end(), f.data(), f.data() + f.numel());
                                             labels.insert(labels.end(), l.begin(), l.end());
                                           });
  report_dropped(a.input, dropped);
  const int64_t n = static_cast<int64_t>(labels.size());
  AtomicH5File out(a.output);
  h5_write_tensor(out.id(), "features", Tensor::from({n, model->feature_dim()}, features));
  h5_write_int64(out.id(), "labels", labels);
  h5_set_attr(out.id(), "checkpoint", a.checkpoint);
  out.commit();
  fmt::print("wrote {} x {} features to {}\n", n, model->feature_dim(), a.output);
}

CLI::App* add_inference_options(CLI::App& app, const char* name, const char* help, std::shared_ptr<PredictArgs> a,
                                const char* output_help) {
  CLI::App* cmd = app.add_subcommand(name, help);
  cmd->add_option("--checkpoint,-c", a->checkpoint, "model checkpoint")->required()->check(CLI::ExistingFile);
  cmd->add_option("--input,-i", a->input, "jets: reference-format or cached image file")->required()->check(CLI::ExistingFile);
  cmd->add_option("--output,-o", a->output, output_help)->required();
  cmd->add_option("--batch-size", a->batch_size, "inference batch size")->default_val(256);
  cmd->add_option("--max-jets", a->max_jets, "only the first N jets (0: all)")->default_val(0);
  a->image.add_to(*cmd);
  add_threads_option(*cmd, a->threads);
  return cmd;
}

}  // namespace

void add_predict_commands(CLI::App& app) {
  auto p = std::make_shared<PredictArgs>();
  add_inference_options(app, "predict", "Score jets with a trained model", p,
                        "predictions file: .h5 (score, label) or .csv")
      ->callback([p] { run_predict(*p); });
  auto f = std::make_shared<PredictArgs>();
  add_inference_options(app, "features", "Write the featurizer's outputs (for toptag train --features)", f,
                        "features file (HDF5: /features [N, F], /labels [N])")
      ->callback([f] { run_features(*f); });
}

}  // namespace toptag::apps
