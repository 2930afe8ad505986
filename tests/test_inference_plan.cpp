// The frozen inference plan (nn/inference_plan.h) computes the model's function: its features and
// logits match the autograd path's (batch norms folded, eval mode) on every instruction set this CPU
// runs, for bottleneck and basic blocks, one and three colours, batch 1 and 64, 40x40 and odd sizes.
#include <algorithm>
#include <cmath>
#include <functional>

#include "nn/inference_plan.h"
#include "testing.h"

namespace toptag {
namespace {

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
  for (Isa isa : testing::isas_here()) {
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

INSTANTIATE_TEST_SUITE_P(
    Models, PlanVsModel,
    ::testing::Values(PlanCase{{"resnet50", 1, 8, 32, 2}, 1, 40}, PlanCase{{"resnet50", 1, 8, 32, 2}, 64, 40},
                      PlanCase{{"resnet50", 3, 8, 16, 2}, 2, 33}, PlanCase{{"resnet18", 1, 8, 16, 3}, 3, 40},
                      // layer1's 64-channel 3x3 layers, 200 tiles: Winograd
                      PlanCase{{"resnet18", 1, 64, 16, 2}, 8, 40}, PlanCase{{"resnet10", 3, 4, 8, 2}, 1, 7}));

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

// Winograd's weights are packed the first time an input makes it pay (the layer's 3x3 maps at 40x40
// never do; 4x4 maps at batch 4 do), by one thread however many ask, and give the model's outputs.
TEST(FrozenResNet, WinogradPackedOnFirstUse) {
  ResNet model(ResNetConfig{"resnet18", 1, 32, 16, 2}, 4);  // layer3's 3x3 layers: 128 channels
  Rng rng(6);
  randomise_batchnorms(model, rng);
  model.set_training(false);
  model.fold_batchnorm();
  const Tensor small = testing::random_tensor({1, 1, 40, 40}, rng), large = testing::random_tensor({4, 1, 64, 64}, rng);
  NoGradGuard no_grad;
  const Tensor expected = model.features(Var(large)).value();
  const FrozenResNet plan(model, active_isa(), true);
  const std::string unpacked = "may run as Winograd F(2x2,3x3), packed on first use: 0 so far";
  EXPECT_NE(plan.describe().find(unpacked), std::string::npos) << plan.describe();
  plan.features(small);
  EXPECT_NE(plan.describe().find(unpacked), std::string::npos) << "40x40 needs no Winograd: " << plan.describe();
  std::vector<Tensor> out(4);
#pragma omp parallel for num_threads(4)
  for (int i = 0; i < 4; ++i) out[static_cast<size_t>(i)] = plan.features(large);
  EXPECT_EQ(plan.describe().find(unpacked), std::string::npos) << plan.describe();
  EXPECT_NE(plan.describe().find("packed on first use: 3 so far"), std::string::npos) << plan.describe();
  for (const Tensor& f : out) testing::expect_close_to_max(f, expected, "features", 1e-4);
}

// toptag perf --local --profile: while timing is on, every run of every layer is timed, in the order
// the plan runs them, with the kernel that ran it, its output and its multiply-adds.
TEST(FrozenResNet, TimesEachLayerOnlyWhileAsked) {
  ResNet model(ResNetConfig{"resnet18", 1, 32, 16, 2}, 4);
  Rng rng(7);
  randomise_batchnorms(model, rng);
  model.set_training(false);
  model.fold_batchnorm();
  const Tensor images = testing::random_tensor({4, 1, 64, 64}, rng);  // layer3's 3x3 layers run as Winograd
  std::vector<std::string> walked;
  model.walk([&](const LayerStep& step) {
    if (step.kind == LayerStep::Kind::conv || step.kind == LayerStep::Kind::max_pool ||
        step.kind == LayerStep::Kind::linear)
      walked.push_back(step.name);
  });
  NoGradGuard no_grad;
  const FrozenResNet plan(model, active_isa(), true);
  plan.head(plan.features(images));
  EXPECT_TRUE(plan.layer_times().empty()) << "timed without being asked";
  plan.time_layers(true);
  for (int run = 0; run < 2; ++run) plan.head(plan.features(images));
  const std::vector<LayerTime> times = plan.layer_times();
  ASSERT_EQ(times.size(), walked.size());
  std::vector<std::string> names;
  for (const LayerTime& t : times) {
    names.push_back(t.layer);
    EXPECT_EQ(t.calls, 2) << t.layer;
    if (t.layer != "maxpool") {  // the pool's time is the stem's
      EXPECT_GT(t.seconds, 0) << t.layer;
    }
    EXPECT_FALSE(t.kernel.empty()) << t.layer;
  }
  std::vector<std::string> sorted_names = names, sorted_walk = walked;
  std::sort(sorted_names.begin(), sorted_names.end());
  std::sort(sorted_walk.begin(), sorted_walk.end());
  ASSERT_EQ(sorted_names, sorted_walk);
  // The plan's order: the walk's, but a block's shortcut before its main path.
  auto at = [&](const std::string& name) { return std::find(names.begin(), names.end(), name) - names.begin(); };
  EXPECT_LT(at("layer2.0.downsample.0"), at("layer2.0.conv1"));
  EXPECT_EQ(names.front(), "conv1");
  EXPECT_EQ(names[1], "maxpool");
  EXPECT_EQ(names[names.size() - 2], "fc1");
  EXPECT_EQ(names.back(), "fc2");
  const LayerTime& stem = times[0];
  // The stem runs the max pool in its output stage (conv_nhwc_maxpool): one time for both, the pool's
  // output.
  EXPECT_EQ(stem.kernel, "f32 direct, max pool in its output stage");
  EXPECT_EQ(stem.output, "4x16x16x32");
  EXPECT_EQ(stem.macs, 2.0 * 4 * 32 * 32 * 32 * 1 * 7 * 7);  // runs x N P Q x K C R S
  EXPECT_EQ(times[1].kernel, "max pool, in the layer before's output stage");
  EXPECT_EQ(times[1].output, "4x16x16x32");
  EXPECT_EQ(times[1].macs, 0);
  const LayerTime& fc1 = times[times.size() - 2];
  EXPECT_EQ(fc1.output, "4x1x1x16");
  EXPECT_EQ(fc1.macs, 2.0 * 4 * 16 * static_cast<double>(model.feature_dim()));
  EXPECT_EQ(times[at("layer3.1.conv1")].kernel, "f32 Winograd F(2x2,3x3)");
  EXPECT_EQ(times[at("layer3.1.conv1")].output, "4x4x4x128");
  EXPECT_EQ(times[at("layer4.1.conv1")].kernel, "f32 direct");  // 2x2 maps: Winograd would not pay
  plan.time_layers(true);                                       // starts again from nothing
  plan.features(images);
  for (const LayerTime& t : plan.layer_times()) EXPECT_EQ(t.calls, 1) << t.layer;
  EXPECT_EQ(plan.layer_times().size(), walked.size() - 2);  // the head did not run
  plan.time_layers(false);
  EXPECT_TRUE(plan.layer_times().empty());
  plan.features(images);
  EXPECT_TRUE(plan.layer_times().empty()) << "timed after timing stopped";
}

// A server runs the early layers of each request as it comes and the late ones once for all
// (serve/engine.h): the early layers' outputs of several batches, concatenated, finish as the
// features of the whole batch. The split is at layer3's input.
TEST(FrozenResNet, FeaturesInTwoPartsOverBatchesGatheredOneByOne) {
  ResNet model(ResNetConfig{"resnet50", 1, 8, 32, 2}, 6);
  Rng rng(7);
  randomise_batchnorms(model, rng);
  model.set_training(false);
  model.fold_batchnorm();
  const Tensor images = testing::random_tensor({6, 1, 40, 40}, rng);
  for (Isa isa : testing::isas_here()) {
    SCOPED_TRACE(isa_name(isa));
    const FrozenResNet plan(model, isa);
    const Tensor whole = plan.features(images);
    std::vector<Tensor> partials;
    for (auto [begin, end] : {std::pair{0, 1}, {1, 4}, {4, 6}})
      partials.push_back(plan.begin_features(testing::rows_of(images, begin, end)));
    // 40x40 -> 20x20 (stem) -> 10x10 (max pool, layer1) -> 5x5 (layer2): 2 x 4 x width channels.
    EXPECT_EQ(partials[1].shape(), Shape({3, 5, 5, 64}));
    // Winograd runs on larger batches only, so the parts may round differently from the whole.
    testing::expect_close_to_max(plan.finish_features(concat_rows(partials)), whole, "features", 1e-5);
  }
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
  // The late layers take only what the early ones give: channels-last, with the split's channels.
  const Tensor partial = plan.begin_features(Tensor::zeros({1, 1, 8, 8}));
  EXPECT_NO_THROW(plan.finish_features(partial));
  EXPECT_NE(testing::error_of([&] {
              plan.finish_features(Tensor::zeros({1, 2, 2, partial.dim(3) + 1}));
            }).find("from begin_features"),
            std::string::npos);
}

TEST(ResNetFreeze, RunsThePlanOnlyWithoutGradientsAndDropsItWhenTheLayersMayChange) {
  ResNet model(ResNetConfig{"resnet10", 1, 4, 8, 2}, 1);
  model.set_training(false);
  model.fold_batchnorm();
  model.freeze();
  ASSERT_NE(model.frozen(), nullptr);
  Rng rng(4);
  const Tensor images = testing::random_tensor({2, 1, 12, 12}, rng);
  // With gradients recorded, the autograd path runs (and a gradient reaches the weights).
  Var logits = model.forward(Var(images));
  EXPECT_TRUE(logits.requires_grad());
  {
    NoGradGuard no_grad;
    EXPECT_FALSE(model.forward(Var(images)).requires_grad());
  }
  // Each of these hands out the layers or changes them: the plan would go stale, so it is dropped.
  const std::vector<std::pair<std::string, std::function<void()>>> thawing = {
      {"state()", [&] { model.state(); }},
      {"head_state()", [&] { model.head_state(); }},
      {"convs()", [&] { model.convs(); }},
      {"linears()", [&] { model.linears(); }},
      {"set_training(true)", [&] { model.set_training(true); }},
      {"thaw()", [&] { model.thaw(); }},
  };
  for (const auto& [what, f] : thawing) {
    model.set_training(false);
    model.freeze();
    f();
    EXPECT_EQ(model.frozen(), nullptr) << what << " kept the plan";
  }
}

TEST(ResNetFreeze, AChangedWeightIsSeenAfterTheAccessorThatChangedIt) {
  ResNet model(ResNetConfig{"resnet10", 1, 4, 8, 2}, 1);
  model.set_training(false);
  model.fold_batchnorm();
  model.freeze();
  Rng rng(6);
  const Tensor images = testing::random_tensor({1, 1, 12, 12}, rng);
  NoGradGuard no_grad;
  const Tensor before = model.forward(Var(images)).value();
  for (auto& [name, linear] : model.linears()) linear->bias.value().fill(3.0f);  // drops the plan
  const Tensor after = model.forward(Var(images)).value();
  EXPECT_NE(before.data()[0], after.data()[0]) << "the stale plan answered";
  model.freeze();
  testing::expect_close_to_max(model.forward(Var(images)).value(), after, "refrozen", 1e-5);
}

TEST(ResNetFreeze, AnEmptyBatch) {
  ResNet model(ResNetConfig{"resnet10", 1, 4, 8, 2}, 1);
  model.set_training(false);
  model.fold_batchnorm();
  model.freeze();
  NoGradGuard no_grad;
  EXPECT_EQ(model.forward(Var(Tensor::zeros({0, 1, 12, 12}))).shape(), Shape({0, 2}));
}

}  // namespace
}  // namespace toptag
