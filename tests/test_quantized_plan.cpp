// A quantized model frozen for inference (quantize/model.h plan_layers, nn/inference_plan.h) computes
// what its float emulation computes: block floating point layers on the integer kernels, the other
// formats and the stem on float kernels with fake-quantized inputs. On every instruction set here,
// for weight-only and weight + activation formats.
#include <cmath>

#include "nn/inference_plan.h"
#include "quantize/model.h"
#include "testing.h"

namespace toptag {
namespace {

// Jet-like images: non-negative, mostly exact zeros.
Tensor sparse_images(const Shape& shape, Rng& rng) {
  Tensor x = Tensor::empty(shape);
  for (float& v : x.span()) v = rng.uniform() < 0.9 ? 0.0f : static_cast<float>(rng.uniform());
  return x;
}

struct QuantizedCase {
  const char* weights;
  const char* activations;  // "" for float inputs
  int64_t batch;
  int integer_layers;       // layers the integer kernels run (all but the stem, for bfp or int8 weights and inputs)
  bool full_bytes = false;  // int8: only on tiles that take activation bytes up to 255 (today every set's)
};

void PrintTo(const QuantizedCase& c, std::ostream* os) {
  *os << c.weights << "/" << (*c.activations ? c.activations : "float") << " batch " << c.batch;
}

// Measured: the block floating point plans give the emulation's features bit for bit (the mantissa
// products and their float32 sums are exact at this width, and bias and residual round once in both);
// weight-only ms-fp8 differs by 4e-7 of the largest feature.
constexpr double kTolerance = 1e-5;
// (8-bit fixed point too: its integer path sums exactly.)
// int8 activations are rounded to steps of (max - min) / 255: a float32 rounding difference anywhere
// upstream (another summation order in the float layers) can move a value
// across a rounding boundary, one step, and later layers carry that on. At batch 2 nothing flips
// (1e-7 of the largest feature); at batch 64 a few values do, in the emulation against itself as well
// (its GEMMs block differently), and the float and integer plans both end up 7e-3 of the largest
// feature and 1.1e-2 of the largest logit from it, on this random-weight network; 2.1e-2 of the
// largest logit in the sanitizer build (clang) with the emulation's GEMMs on toptag's tiles.
constexpr double kInt8Tolerance = 3e-2;

class QuantizedPlanVsEmulation : public ::testing::TestWithParam<QuantizedCase> {};

TEST_P(QuantizedPlanVsEmulation, FeaturesAndLogitsMatch) {
  const QuantizedCase c = GetParam();
  ResNet model(ResNetConfig{"resnet50", 1, 8, 32, 2}, 3);
  model.set_training(false);
  model.fold_batchnorm();
  Rng rng(4);
  const Tensor images = sparse_images({c.batch, 1, 40, 40}, rng);
  auto config = std::make_shared<QuantizationConfig>(make_quantization(c.weights, c.activations, "masked"));
  if (config->activations && config->activations->kind == FormatKind::int8) {
    bool given = false;
    calibrate(model, *config, [&]() -> std::optional<Tensor> {
      if (given) return std::nullopt;
      given = true;
      return images;
    });
  }
  attach_quantization(model, config);
  freeze_for_inference(model, *config);
  NoGradGuard no_grad;
  const Tensor features = model.features(Var(images)).value();
  const Tensor logits = model.head(Var(features)).value();
  const LayerQuantizations layers = plan_layers(model, *config);
  for (Isa isa : testing::isas_here()) {
    SCOPED_TRACE(isa_name(isa));
    const FrozenResNet plan(model, isa, true, &layers);
    const std::string engine = plan.describe();
    const int integer = c.full_bytes && !kernels(isa).tile_bfp_full_bytes ? 0 : c.integer_layers;
    EXPECT_NE(engine.find(fmt::format("quantized: {} of 55 layers on integer", integer)), std::string::npos) << engine;
    plan.time_layers(true);  // and each layer says which kernel ran it (toptag perf --local --profile)
    const Tensor f = plan.features(images);
    plan.head(f);
    int timed_integer = 0, words = 0, bytes = 0;
    const char* other_family = c.full_bytes ? "bfp" : "int8";  // int8 and fixed<8,I> run int8's tiles
    for (const LayerTime& t : plan.layer_times()) {
      timed_integer += t.kernel.rfind("f32 ", 0) != 0 && t.kernel.rfind("max pool", 0) != 0;
      words += t.kernel == "int8 words";
      bytes += t.kernel == "int8 bytes";
      EXPECT_NE(t.kernel.rfind(other_family, 0), 0u) << t.layer << ": " << t.kernel;
    }
    EXPECT_EQ(timed_integer, integer);
    // int8 runs on the word tile from 48 output rows (bfp.h int8_words_pay), where the set has one:
    // at batch 64 the layers of 1 to 4 pixels too; at a batch of 2 or 3 those run on the byte tile.
    if (c.full_bytes && integer > 0) {
      if (c.batch >= 48 && kernels(isa).tile_int8_words) {
        EXPECT_GT(words, 0);
      }
      if (c.batch <= 3) {
        EXPECT_GT(bytes, 0);
      }
    }
    plan.time_layers(false);
    const double tolerance = std::string(c.activations) == "int8" ? kInt8Tolerance : kTolerance;
    testing::expect_close_to_max(f, features, "features", tolerance);
    testing::expect_close_to_max(plan.head(f), logits, "logits", tolerance);
    if (c.batch > 1) {  // in two parts, as the server runs it: the first row's early layers alone
      const std::vector<Tensor> partials{plan.begin_features(testing::rows_of(images, 0, 1)),
                                         plan.begin_features(testing::rows_of(images, 1, c.batch))};
      testing::expect_close_to_max(plan.finish_features(concat_rows(partials)), f, "features in two parts", tolerance);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, QuantizedPlanVsEmulation,
                         ::testing::Values(QuantizedCase{"ms-fp8", "ms-fp8", 1, 54},
                                           QuantizedCase{"ms-fp8", "ms-fp8", 64, 54},
                                           QuantizedCase{"msfp16", "msfp16", 3, 54}, QuantizedCase{"ms-fp8", "", 2, 0},
                                           QuantizedCase{"int8", "int8", 2, 54, true},
                                           QuantizedCase{"int8", "int8", 64, 54, true},
                                           QuantizedCase{"fixed<8,3>", "fixed<8,3>", 2, 54, true},
                                           QuantizedCase{"fixed<8,3,RND,SAT>", "ufixed<8,5,RND_CONV,SAT>", 3, 54, true},
                                           QuantizedCase{"fixed<16,6>", "fixed<16,6>", 2, 0}));

// A fixed<8,I> weight at -128, which the AVX2 tile cannot take (it reads int8 bytes signed): that
// layer runs on float kernels there, the others on integer ones, and the model still matches.
TEST(QuantizedPlan, AWeightOfMinus128RunsItsLayerInFloatOnAvx2) {
  ResNet model(ResNetConfig{"resnet50", 1, 8, 32, 2}, 3);
  model.set_training(false);
  model.fold_batchnorm();
  model.convs()[1].second->weight.value().data()[0] = -4.0f;  // fixed<8,3>: -4 is -128 LSBs
  Rng rng(4);
  const Tensor images = sparse_images({2, 1, 40, 40}, rng);
  auto config = std::make_shared<QuantizationConfig>(make_quantization("fixed<8,3>", "fixed<8,3>", "masked"));
  attach_quantization(model, config);
  freeze_for_inference(model, *config);
  NoGradGuard no_grad;
  const Tensor features = model.features(Var(images)).value();
  const LayerQuantizations layers = plan_layers(model, *config);
  for (Isa isa : testing::isas_here()) {
    SCOPED_TRACE(isa_name(isa));
    const FrozenResNet plan(model, isa, true, &layers);
    const int integer = kernels(isa).int8_signed_bytes ? 53 : 54;
    EXPECT_NE(plan.describe().find(fmt::format("quantized: {} of 55 layers on integer", integer)), std::string::npos)
        << plan.describe();
    testing::expect_close_to_max(plan.features(images), features, "features", kInt8Tolerance);
  }
}

// head() takes features from outside (a features file): negative ones, which no ReLU produced, run
// the head's float path instead of the integer one that needs non-negative inputs.
TEST(QuantizedPlan, TheHeadTakesNegativeFeatures) {
  ResNet model(ResNetConfig{"resnet18", 1, 8, 16, 2}, 3);
  model.set_training(false);
  model.fold_batchnorm();
  auto config = std::make_shared<QuantizationConfig>(make_quantization("ms-fp8", "ms-fp8", "masked"));
  attach_quantization(model, config);
  freeze_for_inference(model, *config);
  Rng rng(6);
  const Tensor features = testing::random_tensor({3, model.feature_dim()}, rng);  // about half negative
  NoGradGuard no_grad;
  const Tensor logits = model.head(Var(features)).value();
  const LayerQuantizations layers = plan_layers(model, *config);
  for (Isa isa : testing::isas_here()) {
    SCOPED_TRACE(isa_name(isa));
    const FrozenResNet plan(model, isa, true, &layers);
    testing::expect_close_to_max(plan.head(features), logits, "logits", kTolerance);
  }
}

}  // namespace
}  // namespace toptag
