// The frozen inference plan (nn/inference_plan.h) computes the model's function: its features and
// logits match the autograd path's (batch norms folded, eval mode) on every instruction set this CPU
// runs, for bottleneck and basic blocks, one and three colours, batch 1 and 64, 40x40 and odd sizes.
#include <cmath>

#include "nn/inference_plan.h"
#include "testing.h"

namespace toptag {
namespace {

std::vector<Isa> isas_here() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::ref, Isa::avx2, Isa::avx512})
    if (cpu_supports(isa)) out.push_back(isa);
  return out;
}

// Random running statistics, so that folding does something.
void randomise_batchnorms(ResNet& model, Rng& rng) {
  for (NamedBuffer& b : model.state().buffers)
    for (float& v : b.tensor->span())
      v = b.name.ends_with("running_var") ? static_cast<float>(0.5 + rng.uniform())
                                          : static_cast<float>(0.1 * rng.normal());
}

struct PlanCase {
  ResNetConfig config;
  int64_t batch, size;
};

class PlanVsModel : public ::testing::TestWithParam<PlanCase> {};

TEST_P(PlanVsModel, FeaturesAndLogitsMatch) {
  const PlanCase c = GetParam();
  ResNet model(c.config, 5);
  Rng rng(9);
  randomise_batchnorms(model, rng);
  model.set_training(false);
  model.fold_batchnorm();
  const Tensor images = testing::random_tensor({c.batch, c.config.in_channels, c.size, c.size}, rng);
  NoGradGuard no_grad;
  const Tensor features = model.features(Var(images)).value();
  const Tensor logits = model.head(Var(features)).value();
  for (Isa isa : isas_here()) {
    SCOPED_TRACE(isa_name(isa));
    for (bool winograd : {false, true}) {
      SCOPED_TRACE(winograd ? "with Winograd" : "direct only");
      const FrozenResNet plan(model, isa, winograd);
      const Tensor f = plan.features(images);
      testing::expect_close_to_max(f, features, "features", 1e-4);
      testing::expect_close_to_max(plan.head(f), logits, "logits", 1e-4);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, PlanVsModel,
                         ::testing::Values(PlanCase{{"resnet50", 1, 8, 32, 2}, 1, 40},
                                           PlanCase{{"resnet50", 1, 8, 32, 2}, 64, 40},
                                           PlanCase{{"resnet50", 3, 8, 16, 2}, 2, 33},
                                           PlanCase{{"resnet18", 1, 8, 16, 3}, 3, 40},
                                           PlanCase{{"resnet10", 3, 4, 8, 2}, 1, 7}));

TEST(FrozenResNet, ThePapersModelAtBatchOne) {
  ResNet model(ResNetConfig{}, 1);
  Rng rng(2);
  randomise_batchnorms(model, rng);
  model.set_training(false);
  model.fold_batchnorm();
  const Tensor images = testing::random_tensor({1, 1, 40, 40}, rng);
  NoGradGuard no_grad;
  const Tensor logits = model.forward(Var(images)).value();
  const FrozenResNet plan(model);
  testing::expect_close_to_max(plan.head(plan.features(images)), logits, "logits", 1e-4);
  EXPECT_NE(plan.describe().find(plan.kernel_set().name), std::string::npos);
}

TEST(FrozenResNet, RefusesWhatItCannotRun) {
  ResNet model(ResNetConfig{"resnet10", 1, 4, 8, 2}, 1);
  EXPECT_NE(testing::error_of([&] { FrozenResNet plan(model); }).find("batch norm is not folded"), std::string::npos);
  model.fold_batchnorm();
  model.convs()[3].second->hooks = std::make_shared<LayerHooks>();
  EXPECT_NE(testing::error_of([&] { FrozenResNet plan(model); }).find("hooks"), std::string::npos);
  model.convs()[3].second->hooks.reset();
  const FrozenResNet plan(model);
  EXPECT_NE(testing::error_of([&] {
              plan.features(Tensor::zeros({1, 3, 8, 8}));
            }).find("(N, 1, H, W)"),
            std::string::npos);
  EXPECT_NE(testing::error_of([&] { plan.head(Tensor::zeros({1, 5})); }).find("features of shape"), std::string::npos);
}

}  // namespace
}  // namespace toptag
