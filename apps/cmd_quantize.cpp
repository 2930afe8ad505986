// toptag quantize: post-training quantization of a checkpoint to an FPGA number format.
#include <fmt/format.h>

#include <cmath>

#include "apps/commands.h"
#include "apps/image_options.h"
#include "data/loader.h"
#include "io/files.h"
#include "nn/check.h"
#include "tagger/tagger.h"

namespace toptag::apps {

namespace {

struct QuantizeArgs {
  std::string checkpoint, output, format, activation_format, ste = "masked", calibration, key;
  bool activations = false;
  int64_t calibration_jets = 2048, batch_size = 128;
  ImageArgs image;
  int threads = 0;
};

void run_quantize(const QuantizeArgs& a) {
  FileUse()
      .reads("--checkpoint", a.checkpoint)
      .reads("--calibration", a.calibration)
      .writes("--output", a.output)
      .check();
  apply_threads(a.threads);
  Tagger tagger = load_tagger(a.checkpoint);
  if (tagger.quantized())
    fail("{}: already quantized ({}); quantize the float checkpoint instead", a.checkpoint, tagger.describe());
  // Weights trained elsewhere: the image flags say what they are fed, and the output stores it.
  tagger.images = a.image.merged(tagger);
  validate(tagger.images);
  check_channels(*tagger.model, tagger.images, a.checkpoint);
  const std::string activations = !a.activation_format.empty() ? a.activation_format : a.activations ? a.format : "";
  auto config = std::make_shared<QuantizationConfig>(make_quantization(a.format, activations, a.ste));
  const bool needs_calibration = config->activations && config->activations->kind == FormatKind::int8;
  if (needs_calibration && a.calibration.empty())
    fail("int8 activations need --calibration FILE (jets to observe the input ranges on)");
  std::optional<JetFile> file;
  std::optional<Loader> loader;
  if (needs_calibration) {
    file.emplace(a.calibration, a.key);
    LoaderOptions lo;
    lo.batch_size = a.batch_size;
    lo.shuffle = false;
    lo.max_jets = a.calibration_jets;
    // The ranges are those of the images calibrated on: a checkpoint that stores no image options
    // stores these (a cached image file imposes its own size).
    tagger.images = a.image.resolve(*file, tagger);
    check_channels(*tagger.model, tagger.images, a.calibration);
    loader.emplace(*file, tagger.images, lo);
    loader->start_epoch(0);
  }
  const int64_t seen = quantize_tagger(tagger, config, [&]() -> std::optional<Tensor> {
    std::optional<Batch> b = loader ? loader->next() : std::nullopt;
    return b ? std::optional<Tensor>(b->images) : std::nullopt;
  });
  if (seen > 0)
    fmt::print("calibrated {} layer input ranges on {} jets of {}\n", config->ranges.size(), seen, a.calibration);
  ResNet& model = *tagger.model;

  // How far the quantized weights are from the float ones.
  double err2 = 0, ref2 = 0;
  int64_t layers = 0;
  for (auto& [name, conv] : model.convs()) {
    Tensor q = Tensor::empty(conv->weight.shape());
    quantize_tensor(config->weights, true, conv->weight.value(), q, nullptr);
    for (int64_t i = 0; i < q.numel(); ++i) {
      const double w = conv->weight.value().data()[i];
      err2 += (q.data()[i] - w) * (q.data()[i] - w), ref2 += w * w;
    }
    ++layers;
  }
  save_tagger(a.output, tagger);
  fmt::print("quantized {} conv and {} linear layers of {} ({}), batch norms folded\n", layers, model.linears().size(),
             a.checkpoint, config->describe());
  fmt::print("relative RMS error of the conv weights: {:.4f}\n", std::sqrt(err2 / std::max(ref2, 1e-30)));
  fmt::print("wrote {}\n", a.output);
}

}  // namespace

void add_quantize_command(CLI::App& app) {
  auto a = std::make_shared<QuantizeArgs>();
  CLI::App* cmd =
      app.add_subcommand("quantize", "Post-training quantization to an FPGA number format (batch norms folded)");
  cmd->add_option("--checkpoint,-c", a->checkpoint, "float checkpoint")->required()->check(CLI::ExistingFile);
  cmd->add_option("--format,-f", a->format,
                  "weight format: ms-fp8, ms-fp9, msfp12, msfp16, mxint8, bfp<E,M,B>, "
                  "fixed<W,I[,RND|RND_CONV|TRN[,SAT|WRAP]]>, int8")
      ->required();
  cmd->add_flag("--activations", a->activations, "quantize every conv/linear input too, in the same format");
  cmd->add_option("--activation-format", a->activation_format, "quantize the inputs in this format instead");
  cmd->add_option("--ste", a->ste, "straight-through estimator for later fine-tuning: masked or identity")
      ->default_val("masked");
  cmd->add_option("--calibration", a->calibration, "jets for int8 activation ranges")->check(CLI::ExistingFile);
  add_key_option(*cmd, a->key);
  cmd->add_option("--calibration-jets", a->calibration_jets, "jets used for calibration")
      ->default_val(2048)
      ->check(in_range(1, 1e9));
  cmd->add_option("--output,-o", a->output, "quantized checkpoint")->required();
  a->image.add_to(*cmd);
  add_threads_option(*cmd, a->threads);
  cmd->callback([a] { run_quantize(*a); });
}

}  // namespace toptag::apps
