// toptag export: a checkpoint as an ONNX model, and optionally a Triton model repository around it.
#include <fmt/format.h>

#include <chrono>
#include <filesystem>

#include "apps/commands.h"
#include "apps/image_options.h"
#include "export/onnx_export.h"
#include "export/onnx_graph.h"
#include "export/triton.h"
#include "io/files.h"
#include "nn/check.h"

namespace toptag::apps {

namespace {

struct ExportArgs {
  std::string checkpoint, output, triton_repo;
  TritonOptions triton;
  ImageArgs image;
  bool force = false;
};

std::string dims_text(const std::vector<int64_t>& dims) {
  std::vector<std::string> parts;
  for (int64_t d : dims) parts.push_back(d < 0 ? "batch" : std::to_string(d));
  return fmt::format("[{}]", fmt::join(parts, ", "));
}

void run_export(const ExportArgs& a) {
  if (a.output.empty() && a.triton_repo.empty()) fail("give --output FILE.onnx, --triton-repo DIR, or both");
  FileUse use;
  use.reads("--checkpoint", a.checkpoint).writes("--output", a.output);
  if (!a.triton_repo.empty())
    use.replaces("--triton-repo", (std::filesystem::path(a.triton_repo) / a.triton.model_name).string());
  use.check();
  if (!a.triton_repo.empty()) check_triton_model_name(a.triton.model_name);
  const auto start = std::chrono::steady_clock::now();
  Tagger tagger = load_tagger(a.checkpoint);
  // Weights trained elsewhere: the image flags fix the model's input size, and the export stores them.
  tagger.images = a.image.merged(tagger);
  validate(tagger.images);
  check_channels(*tagger.model, tagger.images, a.checkpoint);
  const OnnxExport exported = export_onnx(tagger, a.checkpoint);
  for (const std::string& w : exported.warnings) fmt::print(stderr, "toptag: warning: {}: {}\n", a.checkpoint, w);

  std::vector<std::string> written;
  if (!a.output.empty()) {
    write_onnx(a.output, exported.model);
    written.push_back(a.output);
  }
  std::vector<std::string> replaced;
  if (!a.triton_repo.empty()) {
    const TritonRepositoryWrite w = write_triton_repository(a.triton_repo, exported.model, a.triton, a.force);
    written.push_back(w.model_dir + "/config.pbtxt");
    written.push_back(w.model_dir + "/" + kModelVersion + "/model.onnx");
    if (!w.leftover.empty()) fmt::print(stderr, "toptag: warning: {}\n", w.leftover);
    if (!w.replaced.empty())
      replaced.push_back(fmt::format("{} (it held {})", w.model_dir, fmt::join(w.replaced, ", ")));
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  const onnx::ModelProto& m = exported.model;
  fmt::print("exported {} ({}) from {}: ONNX opset {}, {} nodes, {:.1f} MB\n", tagger.model->config().arch,
             tagger.describe(), a.checkpoint, kOnnxOpset, m.graph().node_size(),
             static_cast<double>(m.ByteSizeLong()) / 1e6);
  fmt::print("operators      {}\n", fmt::join(onnx_operators(m), ", "));
  for (const OnnxTensorInfo& t : onnx_inputs(m))
    fmt::print("input          {} float32 {}\n", t.name, dims_text(t.dims));
  for (const OnnxTensorInfo& t : onnx_outputs(m))
    fmt::print("output         {} float32 {}\n", t.name, dims_text(t.dims));
  fmt::print("images         {}: made outside the model (toptag images with these options)\n",
             tagger.images.describe());
  fmt::print("activations    {}\n", onnx_metadata(m, "activation_quantization"));
  for (const std::string& path : replaced) fmt::print("replaced {}\n", path);
  for (const std::string& path : written) fmt::print("wrote {}\n", path);
  if (!a.triton_repo.empty())
    fmt::print("serve it with: tritonserver --model-repository {}   (clients: --model {})\n", a.triton_repo,
               a.triton.model_name);
  fmt::print("in {:.1f} s\n", seconds);
}

}  // namespace

void add_export_command(CLI::App& app) {
  auto a = std::make_shared<ExportArgs>();
  CLI::App* cmd = app.add_subcommand(
      "export", "Write a checkpoint as an ONNX model (opset 13), and/or a Triton model repository serving it");
  cmd->add_option("--checkpoint,-c", a->checkpoint, "any toptag checkpoint: float, quantized or training")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--output,-o", a->output, "ONNX model file to write");
  cmd->add_option("--triton-repo", a->triton_repo,
                  "write a Triton model repository here: DIR/NAME/config.pbtxt and DIR/NAME/1/model.onnx");
  cmd->add_flag("--force", a->force,
                "--triton-repo: replace an existing DIR/NAME whole (its other versions and files go with it)");
  cmd->add_option("--model-name", a->triton.model_name, "--triton-repo: the model's name (clients: --model NAME)")
      ->default_val(kDefaultModelName);
  cmd->add_option("--max-batch", a->triton.max_batch, "--triton-repo: max_batch_size, the most images per execution")
      ->default_val(kDefaultMaxBatch)
      ->check(in_range(1, 65536));
  cmd->add_option("--max-queue-delay-us", a->triton.max_queue_delay_us,
                  "--triton-repo: dynamic batching's longest wait for a batch to fill, in microseconds")
      ->default_val(kDefaultMaxQueueDelayUs)
      ->check(in_range(0, 1e7));
  a->image.add_to(*cmd);
  cmd->callback([a] { run_export(*a); });
}

}  // namespace toptag::apps
