// toptag model: describe an architecture or a checkpoint (layers, shapes, parameter count).
#include <fmt/format.h>

#include <memory>
#include <optional>

#include "apps/commands.h"
#include "io/checkpoint.h"
#include "nn/blas.h"
#include "nn/gemm.h"
#include "nn/kernels/tile.h"
#include "tagger/tagger.h"

namespace toptag::apps {

namespace {

struct ModelArgs {
  std::string arch = "resnet50", checkpoint;
  int64_t in_channels = 1, width = 64, hidden = 1024, image_size = 40;
  bool list_tensors = false;
};

// The floating-point operations of one forward pass on one image, counted by gemm() (convolutions and
// linear layers; the elementwise ops add well under 1%).
double forward_gflops(ResNet& model, int64_t image_size) {
  NoGradGuard no_grad;
  model.set_training(false);
  const Tensor image = Tensor::zeros({1, model.config().in_channels, image_size, image_size});
  const int64_t before = gemm_flops();
  model.forward(Var(image));
  return static_cast<double>(gemm_flops() - before) * 1e-9;
}

void run_model(const ModelArgs& args) {
  std::unique_ptr<ResNet> model;
  std::optional<Tagger> tagger;
  if (!args.checkpoint.empty()) {
    tagger.emplace(load_tagger(args.checkpoint));
    model = std::move(tagger->model);
  } else {
    model = std::make_unique<ResNet>(ResNetConfig{args.arch, args.in_channels, args.width, args.hidden, 2}, 0);
  }
  const ResNetConfig& c = model->config();
  StateList state = model->state();
  fmt::print("architecture   {}\n", c.arch);
  fmt::print("input channels {}\n", c.in_channels);
  fmt::print("stem width     {}\n", c.width);
  fmt::print("feature width  {}\n", model->feature_dim());
  fmt::print("head           fc1 {} -> {} (ReLU), fc2 {} -> {}\n", model->feature_dim(), c.hidden, c.hidden, c.classes);
  fmt::print("parameters     {}\n", state.parameter_count());
  if (tagger)
    fmt::print("images         {} ({})\n", tagger->images.describe(),
               tagger->images_stored ? "stored in the checkpoint"
                                     : "not stored: defaults; --image-size, --channels ... give them to each command, "
                                       "and quantize and export store them");
  fmt::print("buffers        {} tensors (batch-norm running statistics)\n", state.buffers.size());
  fmt::print("GEMM FLOPs     {:.3f} G per {}x{} image (forward), counted\n", forward_gflops(*model, args.image_size),
             args.image_size, args.image_size);
  fmt::print("BLAS           {}\n", blas_info().summary());
  fmt::print("training       {}, matrix products on {}\n",
             model->featurizer_layout() == ActivationLayout::nhwc
                 ? "channels-last (NHWC) autograd, im2col"
                 : "NCHW autograd (the layers' input quantizers), im2col",
             gemm_choice().reason);
  if (tagger && tagger->quantized()) {
    // Frozen as predict and serve freeze it, to say which layers run on integer kernels.
    tagger->model = std::move(model);
    freeze_for_inference(*tagger);
    fmt::print("inference      {}\n", tagger->describe_engine());
    model = std::move(tagger->model);
  } else
    fmt::print("inference      toptag's kernels {}, instruction set {}\n", kernels(active_isa()).name, describe_isa());
  if (args.list_tensors) {
    for (const auto& p : state.parameters) fmt::print("  {:<40} {}\n", p.name, p.var->shape().str());
    for (const auto& b : state.buffers) fmt::print("  {:<40} {}\n", b.name, b.tensor->shape().str());
  }
}

}  // namespace

void add_model_command(CLI::App& app) {
  auto args = std::make_shared<ModelArgs>();
  CLI::App* cmd =
      app.add_subcommand("model", "Describe an architecture or a checkpoint: layers, sizes, parameter count");
  cmd->add_option("--arch", args->arch, "architecture: resnet10, resnet18, resnet34, resnet50, resnet101, resnet152")
      ->default_val("resnet50");
  cmd->add_option("--in-channels", args->in_channels, "input image channels (1, or 3 as the paper)")
      ->default_val(1)
      ->check(in_range(1, 4));
  cmd->add_option("--width", args->width, "stem width (torchvision: 64)")->default_val(64)->check(in_range(1, 1024));
  cmd->add_option("--hidden", args->hidden, "width of the fc1 layer of the head")
      ->default_val(1024)
      ->check(in_range(1, 65536));
  cmd->add_option("--checkpoint", args->checkpoint, "describe this checkpoint instead")->check(CLI::ExistingFile);
  cmd->add_option("--image-size", args->image_size, "image side for the FLOP count")
      ->default_val(40)

      ->check(in_range(4, 1024));
  cmd->add_flag("--tensors", args->list_tensors, "list every tensor with its shape");
  cmd->callback([args] { run_model(*args); });
}

}  // namespace toptag::apps
