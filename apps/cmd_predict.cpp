// toptag predict | features: batched inference without the tape.
#include <fmt/format.h>

#include "apps/commands.h"
#include "apps/image_options.h"
#include "io/files.h"
#include "nn/check.h"
#include "serve/client.h"
#include "tagger/inference.h"
#include "tagger/tagger.h"
#include "training/distributed.h"

namespace toptag::apps {

namespace {

struct PredictArgs {
  std::string checkpoint, input, output, key;
  std::string server, model = kDefaultModelName;  // --server: ask a KServe v2 server instead
  std::string shared_memory = "none";             // --server: "system" sends through shared memory
  int concurrency = 16, retries = 3;
  ImageArgs image;
  int64_t batch_size = 256, max_jets = 0;
  int threads = 0;
  bool emulate = false;
};

// Where the model lives: exactly one of --checkpoint and --server.
void check_source(const PredictArgs& a) {
  if (a.checkpoint.empty() == a.server.empty()) fail("give either --checkpoint FILE or --server URL");
  if (!a.server.empty() && World::get().distributed())
    fail("--server is one client process with --concurrency requests in flight: run it without mpirun");
}

RemotePredictResult predict_from_server(const PredictArgs& a, bool features) {
  RemotePredictOptions o;
  o.url = a.server, o.model = a.model, o.concurrency = a.concurrency, o.retries = a.retries;
  o.max_jets = a.max_jets, o.features = features, o.shared_memory = a.shared_memory == "system";
  JetFile file(a.input, a.key);
  RemotePredictResult r = predict_remote(file, o);
  warn_skipped(a.input, r.dropped);
  const double n = static_cast<double>(r.predictions.size());
  fmt::print("{} one-jet requests to {} ({} in flight): {:.1f} jets/s, {} retried\n", r.predictions.size(), a.server,
             a.concurrency, n / std::max(r.seconds, 1e-9), r.retried);
  return r;
}

InferenceOptions inference_options(const PredictArgs& a, const char* label) {
  InferenceOptions io;
  io.batch_size = a.batch_size;
  io.max_jets = a.max_jets;
  io.label = label;
  io.model = "model " + a.checkpoint;
  // Under mpirun each rank scores its share of the jets (in file order); rank 0 writes them all.
  const World& world = World::get();
  io.part = world.rank(), io.parts = world.size();
  io.show_progress = world.root();
  if (world.distributed()) io.label = fmt::format("{} (rank 0's share of {})", label, world.size());
  return io;
}

void check_files(const PredictArgs& a) {
  FileUse().reads("--input", a.input).reads("--checkpoint", a.checkpoint).writes("--output", a.output).check();
}

void run_predict(const PredictArgs& a) {
  check_files(a);
  check_source(a);
  if (!a.server.empty()) {
    RemotePredictResult r = predict_from_server(a, false);
    write_predictions(a.output, r.predictions);
    fmt::print("wrote {} predictions to {}\n", r.predictions.size(), a.output);
    return;
  }
  apply_threads(a.threads);
  Tagger tagger = load_tagger(a.checkpoint);
  tagger.emulate = a.emulate;
  freeze_for_inference(tagger);
  ResNet* model = tagger.model.get();
  const InferenceOptions io = inference_options(a, "predict");
  const World& world = World::get();
  if (is_features_file(a.input)) {
    // Featurizer outputs (e.g. from a server): only the checkpoint's classifier head runs.
    InferenceResult r = gather(run_head(*model, read_features(a.input), io), world);
    if (!world.root()) return;
    write_predictions(a.output, r.predictions);
    fmt::print("wrote {} predictions (head only, on the features in {}) to {}\n", r.predictions.size(), a.input,
               a.output);
    return;
  }
  JetFile file(a.input, a.key);
  InferenceResult r = gather(run_inference(*model, file, a.image.resolve(file, tagger), io), world);
  if (!world.root()) return;
  warn_skipped(a.input, r.dropped);
  write_predictions(a.output, r.predictions);
  fmt::print("wrote {} predictions to {}{}\n", r.predictions.size(), a.output,
             world.distributed() ? fmt::format(" (scored by {} ranks)", world.size()) : "");
}

void run_features(const PredictArgs& a) {
  check_files(a);
  check_source(a);
  if (!a.server.empty()) {
    RemotePredictResult r = predict_from_server(a, true);
    if (static_cast<int64_t>(r.predictions.label.size()) != r.predictions.size())
      fail("{}: features need labelled jets", a.input);
    const int64_t n = r.predictions.size();
    write_features(a.output, {Tensor::from({n, r.feature_dim}, r.features), r.predictions.label, a.server},
                   a.server + " model " + a.model);
    fmt::print("wrote {} x {} features to {}\n", n, r.feature_dim, a.output);
    return;
  }
  apply_threads(a.threads);
  Tagger tagger = load_tagger(a.checkpoint);
  tagger.emulate = a.emulate;
  freeze_for_inference(tagger);
  ResNet* model = tagger.model.get();
  JetFile file(a.input, a.key);
  const InferenceOptions io = inference_options(a, "features");
  std::vector<float> features;
  std::vector<int64_t> labels;
  NonFiniteReport dropped = run_featurizer(*model, file, a.image.resolve(file, tagger), io,
                                           [&](const Tensor& f, const std::vector<int64_t>& l) {
                                             features.insert(features.end(), f.data(), f.data() + f.numel());
                                             labels.insert(labels.end(), l.begin(), l.end());
                                           });
  const World& world = World::get();
  if (world.distributed()) {  // every rank's rows, in file order, on rank 0
    features = world.gather_to_root(features, model->feature_dim());
    labels = world.gather(std::span<const int64_t>(labels));
    dropped = gather(dropped, world);
    if (!world.root()) return;
  }
  warn_skipped(a.input, dropped);
  const int64_t n = static_cast<int64_t>(labels.size());
  write_features(a.output, {Tensor::from({n, model->feature_dim()}, features), labels, a.output}, a.checkpoint);
  fmt::print("wrote {} x {} features to {}\n", n, model->feature_dim(), a.output);
}

CLI::App* add_inference_options(CLI::App& app, const char* name, const char* help, std::shared_ptr<PredictArgs> a,
                                const char* output_help) {
  CLI::App* cmd = app.add_subcommand(name, help);
  cmd->add_option("--checkpoint,-c", a->checkpoint, "model checkpoint (or --server)")->check(CLI::ExistingFile);
  cmd->add_option("--server", a->server, "ask a KServe v2 server instead: grpc://HOST:PORT or http://HOST:PORT");
  cmd->add_option("--model", a->model, "--server: the model's name")->default_val(kDefaultModelName);
  cmd->add_option("--shared-memory", a->shared_memory,
                  "--server: system sends jets and receives scores through system shared memory (server on this "
                  "machine)")
      ->check(CLI::IsMember({"none", "system"}))
      ->default_val("none");
  cmd->add_option("--concurrency", a->concurrency, "--server: one-jet requests in flight")
      ->default_val(16)

      ->check(in_range(1, 1024));
  cmd->add_option("--retries", a->retries, "--server: retries of a failed request")
      ->default_val(3)

      ->check(in_range(0, 100));
  cmd->add_option("--input,-i", a->input, "jets: reference-format or cached image file")
      ->required()
      ->check(CLI::ExistingFile);
  add_key_option(*cmd, a->key);
  cmd->add_option("--output,-o", a->output, output_help)->required();
  cmd->add_option("--batch-size", a->batch_size, "inference batch size")->default_val(256)->check(in_range(1, 65536));
  cmd->add_option("--max-jets", a->max_jets, "only the first N jets (0: all)")
      ->default_val(0)
      ->check(in_range(0, 1e12));
  a->image.add_to(*cmd);
  add_threads_option(*cmd, a->threads);
  add_emulate_flag(*cmd, a->emulate);
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
