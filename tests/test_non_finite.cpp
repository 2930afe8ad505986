// NaN and +-inf through every op, as PyTorch and ONNX pass them: a NaN anywhere in an op's inputs is
// NaN in every output it reaches, +inf stays +inf where nothing cancels it, and only a ReLU (or a max)
// may turn -inf into an ordinary number. An op that hid a NaN let an overflowing network hand out an
// ordinary-looking score (issue 22: `in > 0 ? in : 0` turned NaN features into softmax(fc2.bias)).
#include <cmath>
#include <limits>

#include "data/image_file.h"
#include "nn/ops/batchnorm2d.h"
#include "nn/ops/conv2d.h"
#include "nn/ops/elementwise.h"
#include "nn/ops/fake_quant.h"
#include "nn/ops/linear.h"
#include "nn/ops/pool.h"
#include "nn/ops/softmax.h"
#include "nn/resnet.h"
#include "quantize/format.h"
#include "tagger/inference.h"
#include "tagger/scores.h"
#include "testing.h"

namespace toptag {
namespace {

constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Images (N=4, C, H, W) of small random values; image 0 holds a NaN, image 1 +inf, image 2 -inf at
// (channel 0, row 2, column 2), a pixel every stride-2 window samples; image 3 is clean.
Tensor poisoned_images(int64_t c, int64_t h, Rng& rng) {
  Tensor x = testing::random_tensor({4, c, h, h}, rng);
  const float poison[3] = {kNan, kInf, -kInf};
  for (int64_t n = 0; n < 3; ++n) x.data()[((n * c + 0) * h + 2) * h + 2] = poison[n];
  return x;
}

// How many values of image n of y (N, ...) are NaN, and how many are non-finite.
struct Count {
  int64_t nan = 0, non_finite = 0;
};
Count count_image(const Tensor& y, int64_t n) {
  const int64_t per = y.numel() / y.dim(0);
  Count c;
  for (int64_t i = n * per; i < (n + 1) * per; ++i) {
    c.nan += std::isnan(y.data()[i]);
    c.non_finite += !std::isfinite(y.data()[i]);
  }
  return c;
}

TEST(NonFinite, ReluPassesNanAndInfAndZeroesMinusInf) {
  Tensor x = Tensor::from({5}, std::vector<float>{kNan, kInf, -kInf, -2.0f, 3.0f});
  const Tensor y = relu(Var(x)).value();
  EXPECT_TRUE(std::isnan(y.data()[0]));
  EXPECT_EQ(y.data()[1], kInf);
  EXPECT_EQ(y.data()[2], 0.0f);
  EXPECT_EQ(y.data()[3], 0.0f);
  EXPECT_EQ(y.data()[4], 3.0f);
  // Large enough for the vectorised loop's body, NaN at every position of a vector.
  Tensor big = Tensor::zeros({67});
  for (int64_t i = 0; i < big.numel(); i += 3) big.data()[i] = kNan;
  const Tensor yb = relu(Var(big)).value();
  for (int64_t i = 0; i < big.numel(); ++i) EXPECT_EQ(std::isnan(yb.data()[i]), i % 3 == 0) << "element " << i;
}

TEST(NonFinite, AddAndAddReluPropagate) {
  Tensor a = Tensor::from({4}, std::vector<float>{kNan, kInf, -kInf, 1.0f});
  Tensor b = Tensor::from({4}, std::vector<float>{1.0f, 1.0f, 1.0f, -kInf});
  const Tensor s = add(Var(a), Var(b)).value();
  EXPECT_TRUE(std::isnan(s.data()[0]));
  EXPECT_EQ(s.data()[1], kInf);
  EXPECT_EQ(s.data()[2], -kInf);
  const Tensor r = add_relu(Var(a), Var(b)).value();
  EXPECT_TRUE(std::isnan(r.data()[0]));
  EXPECT_EQ(r.data()[1], kInf);
  EXPECT_EQ(r.data()[2], 0.0f);
  EXPECT_EQ(r.data()[3], 0.0f);
  Tensor c = Tensor::from({1}, std::vector<float>{kInf}), d = Tensor::from({1}, std::vector<float>{-kInf});
  EXPECT_TRUE(std::isnan(add_relu(Var(c), Var(d)).value().data()[0])) << "inf - inf is NaN, ReLU or not";
}

// Every convolution path (stem, 3x3 batched and per-image, 1x1, strided), with and without the fused
// bias + ReLU: the images holding NaN or +-inf have non-finite outputs, NaN stays NaN, the clean image
// stays finite. Weights are all positive, so nothing cancels and ReLU cannot zero a +inf.
TEST(NonFinite, ConvolutionPropagatesOnEveryPath) {
  struct Case {
    int64_t c, h, k;
    int kernel, stride, pad;
  };
  for (const Case& g : {Case{1, 40, 8, 7, 2, 3}, Case{8, 10, 8, 3, 1, 1}, Case{8, 20, 8, 3, 1, 1},
                        Case{8, 10, 16, 1, 1, 0}, Case{8, 20, 16, 1, 1, 0}, Case{8, 5, 16, 1, 2, 0}}) {
    Rng rng(3);
    const Tensor x = poisoned_images(g.c, g.h, rng);
    Tensor w = Tensor::empty({g.k, g.c, g.kernel, g.kernel});
    w.fill(0.1f);
    Var bias(Tensor::zeros({g.k}));
    for (bool fused_relu : {false, true}) {
      Conv2dParams p{g.stride, g.pad};
      p.relu = fused_relu;
      const std::string what = fmt::format("conv {}x{} stride {} on {}x{}{}", g.kernel, g.kernel, g.stride, g.h, g.h,
                                           fused_relu ? " + relu" : "");
      for (const Tensor& y : {conv2d(Var(x), Var(w), &bias, p).value(), conv2d_forward_ref(x, w, &bias.value(), p)}) {
        EXPECT_GT(count_image(y, 0).nan, 0) << what << ": NaN lost";
        EXPECT_GT(count_image(y, 1).non_finite, 0) << what << ": +inf lost";
        if (!fused_relu) {
          EXPECT_GT(count_image(y, 2).non_finite, 0) << what << ": -inf lost";
        }
        EXPECT_EQ(count_image(y, 3).non_finite, 0) << what << ": the clean image is not finite";
      }
    }
  }
}

TEST(NonFinite, BatchNormPropagatesInEvalAndTraining) {
  Rng rng(4);
  const Tensor x = poisoned_images(3, 5, rng);
  Var gamma(Tensor::full({3}, 1.0f)), beta(Tensor::zeros({3}));
  for (bool relu_after : {false, true}) {
    Tensor mean = Tensor::zeros({3}), var = Tensor::full({3}, 1.0f);
    BatchNormParams p;
    p.training = false;
    p.relu = relu_after;
    const Tensor y = batchnorm2d(Var(x), gamma, beta, mean, var, p).value();
    EXPECT_TRUE(std::isnan(y.data()[(0 * 3 * 5 + 2) * 5 + 2])) << "eval, relu " << relu_after;
    EXPECT_EQ(y.data()[((1 * 3) * 5 + 2) * 5 + 2], kInf) << "eval, relu " << relu_after;
    EXPECT_EQ(count_image(y, 3).non_finite, 0);
    // Training: the batch statistics of channel 0 are NaN, so is every value of channel 0.
    p.training = true;
    const Tensor t = batchnorm2d(Var(x), gamma, beta, mean, var, p).value();
    EXPECT_TRUE(std::isnan(t.data()[(3 * 3 + 0) * 25])) << "training, relu " << relu_after;
    EXPECT_TRUE(std::isnan(mean.data()[0]) || std::isnan(var.data()[0])) << "running statistics hide the NaN";
  }
}

TEST(NonFinite, MaxPoolTakesNanAndInf) {
  Rng rng(5);
  const Tensor x = poisoned_images(2, 6, rng);
  const Tensor y = maxpool2d(Var(x), {3, 2, 1}).value();  // the stem's pool
  EXPECT_GT(count_image(y, 0).nan, 0);
  EXPECT_EQ(y.data()[(1 * 2 * 3 + 1) * 3 + 1], kInf);  // window rows 1..3, columns 1..3
  EXPECT_EQ(count_image(y, 2).non_finite, 0) << "-inf never wins a window holding finite values";
  Tensor all_minus_inf = Tensor::empty({1, 1, 2, 2});
  all_minus_inf.fill(-kInf);
  EXPECT_EQ(maxpool2d(Var(all_minus_inf), {2, 2, 0}).value().data()[0], -kInf);
}

TEST(NonFinite, AveragePoolLinearAndSoftmaxPropagate) {
  Rng rng(6);
  const Tensor x = poisoned_images(2, 4, rng);
  const Tensor pooled = global_avgpool(Var(x)).value();  // (4, 2)
  EXPECT_TRUE(std::isnan(pooled.data()[0]));
  EXPECT_EQ(pooled.data()[2], kInf);
  EXPECT_EQ(pooled.data()[4], -kInf);
  EXPECT_EQ(count_image(pooled, 3).non_finite, 0);
  Tensor w = Tensor::full({3, 2}, 1.0f);
  Var b(Tensor::zeros({3}));
  const Tensor y = linear(Var(pooled), Var(w), &b).value();  // (4, 3)
  EXPECT_TRUE(std::isnan(y.data()[0]));
  EXPECT_EQ(y.data()[3], kInf);
  EXPECT_EQ(y.data()[6], -kInf);
  EXPECT_EQ(count_image(y, 3).non_finite, 0);
  const Tensor p = softmax(Var(y)).value();
  EXPECT_EQ(count_image(p, 0).nan, 3) << "a NaN logit makes its whole row NaN";
  EXPECT_EQ(count_image(p, 3).non_finite, 0);
  Tensor one_nan = Tensor::from({1, 2}, std::vector<float>{kNan, 0.0f});
  EXPECT_TRUE(std::isnan(softmax(Var(one_nan)).value().data()[1])) << "NaN in another class's logit";
}

// The one scoring function that predict and serve share: each row's softmax, a NaN row staying NaN.
TEST(NonFinite, ClassProbabilitiesAreTheSoftmaxAndKeepNan) {
  const Tensor p = class_probabilities(Tensor::from({2, 2}, std::vector<float>{0.0f, std::log(3.0f), kNan, 1.0f}));
  EXPECT_NEAR(p.data()[kQcdClass], 0.25, 1e-7);
  EXPECT_NEAR(p.data()[kTopClass], 0.75, 1e-7);
  EXPECT_TRUE(std::isnan(p.data()[2 + kQcdClass]));
  EXPECT_TRUE(std::isnan(p.data()[2 + kTopClass]));
}

// Fake quantization of activations in each kind of format: NaN stays NaN (the encodings have none,
// but a quantized 0 would hide an overflow); inf saturates to the format's largest value, as defined.
TEST(NonFinite, FakeQuantizationKeepsNan) {
  Tensor x = Tensor::from({1, 4, 1, 1}, std::vector<float>{kNan, 0.5f, kInf, -kInf});
  AffineRange range{-1.0f, 1.0f};
  for (const char* spec : {"ms-fp8", "msfp16", "fixed<8,3>", "int8"}) {
    const Format f = Format::parse(spec);
    const Var y = fake_quantize(
        Var(x), [&](const Tensor& in, Tensor& out, Tensor& ok) { quantize_tensor(f, false, in, out, &ok, &range); },
        SteMode::masked);
    EXPECT_TRUE(std::isnan(y.value().data()[0])) << spec << ": NaN became " << y.value().data()[0];
    EXPECT_TRUE(std::isfinite(y.value().data()[1])) << spec;
    EXPECT_FALSE(std::isnan(y.value().data()[2])) << spec << ": +inf became NaN";
  }
}

// A whole model on images whose values are finite but huge: the network overflows inside and its
// features are NaN. predict and features (run_inference, run_featurizer) refuse to hand out a score
// or a feature row; before, the head's ReLU turned the NaN features into softmax(fc2.bias).
TEST(NonFinite, OverflowingImagesAreRefusedByPredictAndFeatures) {
  const std::string path = ::testing::TempDir() + "overflowing_images.h5";
  ImageOptions images;
  images.size = 16;
  {
    ImageWriter writer(path, images);
    Tensor x = Tensor::full({6, 1, 16, 16}, 3e38f);                                         // below FLT_MAX, 3.4e38
    for (int64_t i = 0; i < 16 * 16; ++i) x.data()[i] = 0.25f * static_cast<float>(i % 5);  // jet 0: ordinary
    writer.append(x, {0, 1, 0, 1, 0, 1});
    writer.close();
  }
  ResNet model(ResNetConfig{"resnet10", 1, 4, 16, 2}, 5);
  model.set_training(false);
  const JetFile file(path);
  InferenceOptions io;
  io.show_progress = false;
  io.model = "model m.h5";
  const std::string predict_error = testing::error_of([&] { run_inference(model, file, images, io); });
  EXPECT_NE(predict_error.find("model m.h5 gives NaN or inf features for jet 1 of " + path), std::string::npos)
      << predict_error;
  const std::string features_error = testing::error_of(
      [&] { run_featurizer(model, file, images, io, [](const Tensor&, const std::vector<int64_t>&) {}); });
  EXPECT_NE(features_error.find("NaN or inf features for jet 1"), std::string::npos) << features_error;
  // Training's validation keeps the rows: the score is NaN, never an ordinary number.
  io.keep_non_finite = true;
  const InferenceResult r = run_inference(model, file, images, io);
  ASSERT_EQ(r.predictions.size(), 6);
  EXPECT_TRUE(std::isfinite(r.predictions.score[0]));
  for (int64_t i = 1; i < 6; ++i) EXPECT_TRUE(std::isnan(r.predictions.score[i])) << "jet " << i;
}

}  // namespace
}  // namespace toptag
