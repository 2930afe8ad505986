// The channels-last training ops against their NCHW twins (the ops the op goldens check against
// PyTorch): the same values and the same gradients, on the edge shapes of issue 24 (1 and 3 input
// channels, 7x7 maps, odd and non-square sizes, strided 1x1, batch 1 and 64), and each through the
// finite-difference harness.
#include <cmath>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "nn/kernels/isa.h"
#include "nn/ops/batchnorm2d.h"
#include "nn/ops/conv2d.h"
#include "nn/ops/conv2d_nhwc.h"
#include "nn/ops/elementwise.h"
#include "nn/ops/layout.h"
#include "nn/ops/pool.h"
#include "nn/resnet.h"
#include "testing.h"

namespace toptag {
namespace {

using testing::expect_close;
using testing::expect_gradients_match;
using testing::random_tensor;

struct ConvCase {
  int64_t N, C, H, W, K;
  int kernel, stride, pad;
  bool bias, relu;
  std::string name() const {
    return "conv N" + std::to_string(N) + " C" + std::to_string(C) + " " + std::to_string(H) + "x" + std::to_string(W) +
           " K" + std::to_string(K) + " k" + std::to_string(kernel) + " s" + std::to_string(stride) +
           (bias ? " bias" : "") + (relu ? " relu" : "");
  }
};

// conv2d_nhwc on kernel set `isa` (its direct kernel; ref: im2col and GEMMs only) for a scope.
struct ConvIsaScope {
  explicit ConvIsaScope(Isa isa) : before(conv2d_nhwc_isa()) { set_conv2d_nhwc_isa(isa); }
  ~ConvIsaScope() { set_conv2d_nhwc_isa(before); }
  Isa before;
};

// conv2d_nhwc against conv2d on x (N,C,H,W): the output, dX, dW and db for L = sum(y * r).
void expect_conv_matches_nchw(const Tensor& x, const Tensor& w, const Tensor* b, Conv2dParams params,
                              const std::string& name, Rng& rng) {
  Var x1(x, true), w1 = Var::parameter(w.clone()), b1 = b ? Var::parameter(b->clone()) : Var();
  Var y1 = conv2d(x1, w1, b ? &b1 : nullptr, params);
  const Tensor r = random_tensor(y1.shape(), rng);  // L = sum(y * r)
  backward(y1, r);

  Var x2(nchw_to_nhwc(x), true), w2 = Var::parameter(w.clone()), b2 = b ? Var::parameter(b->clone()) : Var();
  Var y2 = conv2d_nhwc(x2, w2, b ? &b2 : nullptr, params);
  backward(y2, nchw_to_nhwc(r));

  expect_close(nhwc_to_nchw(y2.value()), y1.value(), name + " y", 1e-5, 1e-6);
  expect_close(nhwc_to_nchw(x2.grad()), x1.grad(), name + " dx", 1e-5, 1e-6);
  expect_close(w2.grad(), w1.grad(), name + " dw", 1e-5, 1e-6);
  if (b) expect_close(b2.grad(), b1.grad(), name + " db", 1e-5, 1e-6);
}

TEST(ChannelsLast, ConvMatchesNchwForwardAndEveryGradient) {
  for (const Isa isa : testing::isas_here()) {
    SCOPED_TRACE(isa_name(isa));
    const ConvIsaScope scope(isa);
    Rng rng(1);
    const std::vector<ConvCase> cases = {
        {2, 1, 9, 9, 4, 7, 2, 3, false, false},    // the stem, one channel
        {3, 3, 7, 7, 5, 3, 1, 1, true, true},      // three channels, a 7x7 map
        {2, 8, 5, 6, 6, 3, 2, 1, false, true},     // odd, non-square, strided
        {1, 16, 7, 7, 8, 1, 1, 0, true, false},    // batch 1, the plain-GEMM 1x1
        {2, 16, 7, 7, 8, 1, 2, 0, false, false},   // the strided 1x1 (a downsample)
        {64, 12, 3, 3, 10, 3, 1, 1, false, true},  // batch 64 on a tiny map
        {64, 20, 5, 5, 7, 1, 1, 0, true, true},    // batch 64, 1x1
        // Columns past the 64 MiB budget (110 x 110 x 576 floats an image): chunks of 2 images and 1.
        {3, 64, 110, 110, 8, 3, 1, 1, false, false},
        // ResNet-50's layer4 at 40x40: a 2x2 map, every window but the centre tap in the padding; and
        // channel counts off the panel widths (8, 16, 32) both ways, for the packed weights' tails.
        {5, 33, 2, 2, 40, 3, 1, 1, false, false},
        {4, 40, 6, 5, 33, 3, 1, 1, true, true},
        {2, 17, 3, 3, 9, 3, 2, 1, false, false},
    };
    for (const ConvCase& c : cases) {
      SCOPED_TRACE(c.name());
      const Tensor x = random_tensor({c.N, c.C, c.H, c.W}, rng), w = random_tensor({c.K, c.C, c.kernel, c.kernel}, rng),
                   b = random_tensor({c.K}, rng);
      expect_conv_matches_nchw(x, w, c.bias ? &b : nullptr, {c.stride, c.pad, c.relu}, c.name(), rng);
    }
  }
}

// Kernels whose input gradient is no plain convolution of dY (not square, or padded as wide as the
// kernel) take im2col's dX on every kernel set; their forward still runs on the direct kernel.
TEST(ChannelsLast, ConvNonSquareAndWidelyPaddedKernels) {
  for (const Isa isa : testing::isas_here()) {
    SCOPED_TRACE(isa_name(isa));
    const ConvIsaScope scope(isa);
    Rng rng(5);
    struct Case {
      int64_t R, S;
      int pad;
    };
    for (const Case& c : {Case{1, 3, 0}, Case{3, 1, 1}, Case{1, 1, 1}, Case{3, 3, 2}, Case{3, 3, 3}}) {
      const std::string name = fmt::format("{}x{} pad {}", c.R, c.S, c.pad);
      SCOPED_TRACE(name);
      const Tensor x = random_tensor({9, 5, 4, 6}, rng), w = random_tensor({7, 5, c.R, c.S}, rng);
      expect_conv_matches_nchw(x, w, nullptr, {1, c.pad, false}, name, rng);
    }
  }
}

TEST(ChannelsLast, ConvFiniteDifferences) {
  for (const Isa isa : testing::isas_here()) {
    SCOPED_TRACE(isa_name(isa));
    const ConvIsaScope scope(isa);
    Rng rng(2);
    const Tensor x = random_tensor({2, 5, 6, 3}, rng), w = random_tensor({4, 3, 3, 3}, rng, 0.5),
                 b = random_tensor({4}, rng);
    expect_gradients_match(
        [](std::vector<Var>& v) {
          return conv2d_nhwc(v[0], v[1], &v[2], {2, 1});
        },
        {x, w, b}, "conv2d_nhwc 3x3 s2");
    const Tensor x1 = random_tensor({3, 4, 4, 6}, rng), w1 = random_tensor({5, 6, 1, 1}, rng, 0.5);
    expect_gradients_match(
        [](std::vector<Var>& v) {
          return conv2d_nhwc(v[0], v[1], nullptr, {1, 0});
        },
        {x1, w1}, "conv2d_nhwc 1x1");
    const Tensor x3 = random_tensor({2, 3, 4, 5}, rng), w3 = random_tensor({6, 5, 3, 3}, rng, 0.5);
    expect_gradients_match(
        [](std::vector<Var>& v) {
          return conv2d_nhwc(v[0], v[1], nullptr, {1, 1});
        },
        {x3, w3}, "conv2d_nhwc 3x3 s1");
  }
}

// A residual: y = relu(conv_b(conv_a(x)) + x), as a block ends. By the time conv_a's backward runs, x's gradient
// already holds the identity's part, its own: conv_a adds into it in place (grad_to_add_into), through the GEMM (1x1)
// and, for the 3x3, through the direct kernel's output stage (over the residual), or col2im on the ref kernel set.
TEST(ChannelsLast, ConvAddsIntoAResidualsGradient) {
  for (const Isa isa : testing::isas_here()) {
    SCOPED_TRACE(isa_name(isa));
    const ConvIsaScope scope(isa);
    Rng rng(4);
    for (int k : {1, 3}) {
      const Tensor x = random_tensor({2, 4, 4, 3}, rng), wa = random_tensor({5, 3, k, k}, rng, 0.5),
                   wb = random_tensor({3, 5, 1, 1}, rng, 0.5);
      expect_gradients_match(
          [k](std::vector<Var>& v) {
            const Var a = conv2d_nhwc(v[0], v[1], nullptr, {1, k / 2});
            return add_relu(conv2d_nhwc(a, v[2], nullptr, {1, 0}), v[0]);
          },
          {x, wa, wb}, fmt::format("residual over conv_a {}x{}", k, k));
    }
  }
}

TEST(ChannelsLast, ConvRejectsMismatchedChannels) {
  Var x(Tensor::zeros({1, 4, 4, 3})), w(Tensor::zeros({2, 5, 3, 3}));
  EXPECT_NE(testing::error_of([&] { conv2d_nhwc(x, w, nullptr, {1, 1}); }).find("channels"), std::string::npos);
}

struct BatchNormRun {
  Tensor y, dx, dgamma, dbeta, running_mean, running_var;
};

// One batch norm forward and backward (L = sum(y * r)) in the given layout, on NCHW x and r.
BatchNormRun run_batchnorm(const Tensor& x, const Tensor& r, bool training, bool relu, bool nhwc) {
  const int64_t C = x.dim(1);
  Rng rng(3);
  Var gamma = Var::parameter(random_tensor({C}, rng)), beta = Var::parameter(random_tensor({C}, rng));
  Tensor running_mean = random_tensor({C}, rng), running_var = Tensor::full({C}, 2.0f);
  BatchNormParams params;
  params.training = training;
  params.relu = relu;
  Var in(nhwc ? nchw_to_nhwc(x) : x.clone(), true);
  Var y = nhwc ? batchnorm2d_nhwc(in, gamma, beta, running_mean, running_var, params)
               : batchnorm2d(in, gamma, beta, running_mean, running_var, params);
  backward(y, nhwc ? nchw_to_nhwc(r) : r);
  auto nchw = [&](const Tensor& t) { return nhwc ? nhwc_to_nchw(t) : t; };
  return {nchw(y.value()), nchw(in.grad()), gamma.grad(), beta.grad(), running_mean, running_var};
}

void expect_same_batchnorm(const Tensor& x, bool training, bool relu, const std::string& what) {
  Rng rng(4);
  const Tensor r = random_tensor(x.shape(), rng);
  const BatchNormRun a = run_batchnorm(x, r, training, relu, false), b = run_batchnorm(x, r, training, relu, true);
  expect_close(b.y, a.y, what + " y", 1e-5, 1e-6);
  expect_close(b.dx, a.dx, what + " dx", 1e-4, 1e-5);
  expect_close(b.dgamma, a.dgamma, what + " dgamma", 1e-4, 1e-5);
  expect_close(b.dbeta, a.dbeta, what + " dbeta", 1e-5, 1e-6);
  expect_close(b.running_mean, a.running_mean, what + " running_mean", 1e-5, 1e-6);
  expect_close(b.running_var, a.running_var, what + " running_var", 1e-5, 1e-6);
}

TEST(ChannelsLast, BatchNormMatchesNchwInEveryMode) {
  Rng rng(5);
  for (const Shape& shape :
       {Shape{2, 3, 5, 7}, Shape{64, 16, 2, 2}, Shape{1, 8, 7, 7}, Shape{4, 70, 3, 3}, Shape{4, 8, 20, 20}}) {
    const Tensor x = random_tensor(shape, rng, 3.0);
    for (bool training : {true, false})
      for (bool relu : {false, true})
        expect_same_batchnorm(x, training, relu,
                              shape.str() + (training ? " training" : " eval") + (relu ? " relu" : ""));
  }
}

TEST(ChannelsLast, BatchNormVarianceSurvivesALargeMean) {
  // Values around 1e3 with spread 1: E[x^2] - E[x]^2 summed in float would cancel the variance away
  // (x^2 is 1e6, its float spacing 0.06); the shift by the first pixel keeps it. Reference: the
  // statistics and y in double. The bound is float's own: x * scale + shift cancels 1e3-sized terms,
  // 1e3 * 2^-24 = 6e-5 per term.
  constexpr double kLargeMeanTol = 3e-4;
  Rng rng(6);
  Tensor x = random_tensor({8, 4, 6, 6}, rng);
  for (float& v : x.span()) v += 1e3f;
  const int64_t C = 4, L = 36, count = 8 * L;
  Tensor expected = Tensor::empty(x.shape()), expected_var = Tensor::empty({C});
  for (int64_t c = 0; c < C; ++c) {
    double sum = 0, squares = 0;
    for (int64_t n = 0; n < 8; ++n)
      for (int64_t i = 0; i < L; ++i) sum += x.data()[(n * C + c) * L + i];
    const double mean = sum / count;
    for (int64_t n = 0; n < 8; ++n)
      for (int64_t i = 0; i < L; ++i) squares += std::pow(x.data()[(n * C + c) * L + i] - mean, 2);
    expected_var.data()[c] = static_cast<float>(squares / count);
    for (int64_t n = 0; n < 8; ++n)
      for (int64_t i = 0; i < L; ++i) {
        const int64_t at = (n * C + c) * L + i;
        expected.data()[at] = static_cast<float>((x.data()[at] - mean) / std::sqrt(squares / count + 1e-5));
      }
  }
  Var gamma = Var::parameter(Tensor::full({C}, 1.0f)), beta = Var::parameter(Tensor::zeros({C}));
  Tensor running_mean = Tensor::zeros({C}), running_var = Tensor::zeros({C});
  BatchNormParams params;
  params.momentum = 1.0f;  // running_var = the batch's unbiased variance
  Var y = batchnorm2d_nhwc(Var(nchw_to_nhwc(x)), gamma, beta, running_mean, running_var, params);
  testing::expect_close_to_max(nhwc_to_nchw(y.value()), expected, "y", kLargeMeanTol);
  for (int64_t c = 0; c < C; ++c) expected_var.data()[c] *= static_cast<float>(count) / (count - 1);
  expect_close(running_var, expected_var, "running_var", kLargeMeanTol, 0);
}

// A second process of a synchronised batch norm, played by the test: it holds the batch `x` (NCHW)
// and the upstream gradient `r`, and adds to each exchange what that process would send, in the
// order the statistics make them: per-channel sums and the count, then the squared deviations about
// the global mean, then in backward sum(dy) and sum(dy * xhat).
struct OtherProcess {
  Tensor x, r, gamma, beta;
  bool relu = false;
  int calls = 0;
  std::vector<double> mean, invstd;

  void operator()(std::span<double> sums) {
    const int64_t N = x.dim(0), C = x.dim(1), L = x.dim(2) * x.dim(3);
    auto each = [&](auto&& f) {
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < C; ++c)
          for (int64_t i = 0; i < L; ++i) f(c, (n * C + c) * L + i);
    };
    ++calls;
    if (calls == 1) {
      each([&](int64_t c, int64_t i) { sums[c] += x.data()[i]; });
      sums[C] += static_cast<double>(N * L);
      for (int64_t c = 0; c < C; ++c) mean.push_back(sums[c] / sums[C]);
    } else if (calls == 2) {
      each([&](int64_t c, int64_t i) { sums[c] += std::pow(x.data()[i] - mean[c], 2); });
      for (int64_t c = 0; c < C; ++c) invstd.push_back(1.0 / std::sqrt(sums[c] / (2.0 * N * L) + 1e-5));
    } else {
      each([&](int64_t c, int64_t i) {
        const double xhat = (x.data()[i] - mean[c]) * invstd[c];
        const double y = xhat * gamma.data()[c] + beta.data()[c];
        const double dy = relu && y <= 0 ? 0.0 : r.data()[i];
        sums[c] += dy;
        sums[C + c] += dy * xhat;
      });
    }
  }
};

// Unsets the cross-batch sum however the test ends.
struct CrossBatchSumScope {
  explicit CrossBatchSumScope(CrossBatchSum sum) { set_batchnorm_cross_batch_sum(std::move(sum)); }
  ~CrossBatchSumScope() { set_batchnorm_cross_batch_sum(nullptr); }
};

TEST(ChannelsLast, BatchNormSynchronisedMatchesOneBatchOfBoth) {
  // This process's batch x and the other's x2 (the same size): synchronised, each process's y and dx
  // are those of one batch norm over both batches. Both layouts; the reference is NCHW, unsynchronised.
  Rng rng(7);
  const Tensor x = random_tensor({3, 5, 4, 4}, rng, 2.0), x2 = random_tensor({3, 5, 4, 4}, rng, 3.0);
  const Tensor r = random_tensor(x.shape(), rng), r2 = random_tensor(x.shape(), rng);
  const Tensor gamma = random_tensor({5}, rng), beta = random_tensor({5}, rng);
  auto both = [](const Tensor& a, const Tensor& b) {
    Tensor t = Tensor::empty({a.dim(0) + b.dim(0), a.dim(1), a.dim(2), a.dim(3)});
    std::copy_n(a.data(), a.numel(), t.data());
    std::copy_n(b.data(), b.numel(), t.data() + a.numel());
    return t;
  };
  BatchNormParams params;
  params.relu = true;
  Tensor ref_mean = Tensor::zeros({5}), ref_var = Tensor::full({5}, 1.0f);
  Var ref_x(both(x, x2), true);
  Var ref_y =
      batchnorm2d(ref_x, Var::parameter(gamma.clone()), Var::parameter(beta.clone()), ref_mean, ref_var, params);
  backward(ref_y, both(r, r2));
  const Tensor y_expected = Tensor::from(x.shape(), {ref_y.value().data(), static_cast<size_t>(x.numel())});
  const Tensor dx_expected = Tensor::from(x.shape(), {ref_x.grad().data(), static_cast<size_t>(x.numel())});

  for (bool nhwc : {false, true}) {
    const std::string what = nhwc ? "channels-last" : "NCHW";
    auto other = std::make_shared<OtherProcess>();
    other->x = x2;
    other->r = r2;
    other->gamma = gamma;
    other->beta = beta;
    other->relu = true;
    CrossBatchSumScope scope([other](std::span<double> sums) { (*other)(sums); });
    Tensor mean = Tensor::zeros({5}), var = Tensor::full({5}, 1.0f);
    Var in(nhwc ? nchw_to_nhwc(x) : x.clone(), true);
    Var g = Var::parameter(gamma.clone()), b = Var::parameter(beta.clone());
    Var y = nhwc ? batchnorm2d_nhwc(in, g, b, mean, var, params) : batchnorm2d(in, g, b, mean, var, params);
    backward(y, nhwc ? nchw_to_nhwc(r) : r);
    EXPECT_EQ(other->calls, 3) << what;
    expect_close(nhwc ? nhwc_to_nchw(y.value()) : y.value(), y_expected, what + " y", 1e-5, 1e-6);
    expect_close(nhwc ? nhwc_to_nchw(in.grad()) : in.grad(), dx_expected, what + " dx", 1e-4, 1e-5);
    expect_close(mean, ref_mean, what + " running_mean", 1e-5, 1e-6);
    expect_close(var, ref_var, what + " running_var", 1e-5, 1e-6);
  }
}

TEST(ChannelsLast, BatchNormFiniteDifferences) {
  Rng rng(8);
  const Tensor x = random_tensor({3, 4, 2, 5}, rng), gamma = random_tensor({5}, rng), beta = random_tensor({5}, rng);
  Tensor running_mean = Tensor::zeros({5}), running_var = Tensor::full({5}, 1.0f);
  expect_gradients_match(
      [&](std::vector<Var>& v) { return batchnorm2d_nhwc(v[0], v[1], v[2], running_mean, running_var, {}); },
      {x, gamma, beta}, "batchnorm2d_nhwc training");
}

// Equal values, NaN equal to NaN.
void expect_identical(const Tensor& actual, const Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.shape().str(), expected.shape().str()) << what;
  for (int64_t i = 0; i < actual.numel(); ++i) {
    const float e = expected.data()[i], a = actual.data()[i];
    ASSERT_TRUE(std::isnan(e) ? std::isnan(a) : e == a) << what << " element " << i << ": " << a << " vs " << e;
  }
}

TEST(ChannelsLast, MaxPoolMatchesNchwWithTiesAndNaN) {
  Rng rng(9);
  // Values from {0, 1, 2}: most windows hold ties, which must go to the same (first) position.
  // 19 channels: the inference loop's vector part sees NaN first, last and between numbers.
  for (const Shape& shape : {Shape{2, 3, 7, 6}, Shape{1, 19, 5, 5}})
    for (const MaxPool2dParams params :
         {MaxPool2dParams{3, 2, 1}, MaxPool2dParams{2, 2, 0}, MaxPool2dParams{3, 1, 1}}) {
      Tensor x = Tensor::empty(shape);
      for (float& v : x.span()) v = static_cast<float>(rng.below(3));
      for (int64_t i = 5; i < x.numel(); i += 37) x.data()[i] = std::numeric_limits<float>::quiet_NaN();
      const std::string what =
          "maxpool " + shape.str() + " k" + std::to_string(params.kernel) + " s" + std::to_string(params.stride);
      // backward() clears the whole tape: each layout's forward and backward run in turn.
      Var a(x, true);
      Var ya = maxpool2d(a, params);
      const Tensor r = random_tensor(ya.shape(), rng);
      backward(ya, r);
      Var b(nchw_to_nhwc(x), true);
      Var yb = maxpool2d_nhwc(b, params);
      backward(yb, nchw_to_nhwc(r));
      expect_identical(nhwc_to_nchw(yb.value()), ya.value(), what);
      expect_identical(nhwc_to_nchw(b.grad()), a.grad(), what + " dx");
      expect_identical(nhwc_to_nchw(maxpool_nhwc(nchw_to_nhwc(x), params)), ya.value(), what + " inference");
    }
}

TEST(ChannelsLast, GlobalAveragePoolAndLayoutChange) {
  Rng rng(10);
  for (const Shape& shape : {Shape{3, 5, 4, 6}, Shape{2, 1, 3, 5}}) {  // one channel: to_channels_last reshapes
    const Tensor x = random_tensor(shape, rng);
    Var a(x, true), b(x, true);
    Var ya = global_avgpool(a);
    const Tensor r = random_tensor(ya.shape(), rng);
    backward(ya, r);
    Var yb = global_avgpool_nhwc(to_channels_last(b));
    backward(yb, r);
    expect_close(yb.value(), ya.value(), "global average pool " + shape.str(), 1e-6, 1e-7);
    expect_close(b.grad(), a.grad(), "global average pool through to_channels_last " + shape.str(), 1e-6, 1e-7);
  }
}

TEST(ChannelsLast, ResNetFallsBackToNchwForInputHooks) {
  ResNet model(ResNetConfig{"resnet10", 1, 4, 8, 2}, 0);
  EXPECT_EQ(model.featurizer_layout(), ActivationLayout::nhwc);
  // An input hook (a quantizer's) sees NCHW activations: layer2's first conv reads layer1's output,
  // (N, 4 channels, 6, 6) for 24x24 images.
  Shape seen;
  Conv2d* conv = model.convs().at(3).second;
  conv->hooks = std::make_shared<LayerHooks>(LayerHooks{nullptr, [&](const Var& v) {
                                                          seen = v.shape();
                                                          return v;
                                                        }});
  EXPECT_EQ(model.featurizer_layout(), ActivationLayout::nchw);
  Rng rng(12);
  model.forward(Var(random_tensor({2, 1, 24, 24}, rng)));
  clear_tape();
  EXPECT_EQ(seen.str(), "[2, 4, 6, 6]");
  // Asked for channels-last directly, a hooked conv refuses.
  EXPECT_NE(testing::error_of([&] {
              conv->forward(Var(Tensor::zeros({2, 3, 3, 8})), false, ActivationLayout::nhwc);
            }).find("input hook"),
            std::string::npos);
  model.set_layout(ActivationLayout::nchw);
  conv->hooks.reset();
  EXPECT_EQ(model.featurizer_layout(), ActivationLayout::nchw);
}

TEST(ChannelsLast, ResNetLayoutsAgreeOnLogitsAndGradients) {
  // Every layer of a small ResNet-50 with three input channels, training mode, both layouts from the
  // same weights. 40x40 images, so that layer4's batch norms see 2x2 pixels per image: over fewer
  // values, their statistics make the network chaotic at float precision (see test_parity.cpp).
  const ResNetConfig config{"resnet50", 3, 8, 16, 2};
  Rng rng(11);
  const Tensor images = random_tensor({4, 3, 40, 40}, rng), r = random_tensor({4, 2}, rng);
  std::vector<Tensor> logits, grads;
  for (ActivationLayout layout : {ActivationLayout::nchw, ActivationLayout::nhwc}) {
    ResNet model(config, 5);
    model.set_layout(layout);
    Var y = model.forward(Var(images));
    backward(y, r);
    logits.push_back(y.value());
    for (const auto& p : model.state().parameters) grads.push_back(p.var->grad().clone());
  }
  // Two float32 orders of the same sums, through 53 batch norms over as few as 16 values a channel:
  // judged, like the gradients, against the largest entry.
  testing::expect_close_to_max(logits[1], logits[0], "logits", 1e-3);
  const size_t n = grads.size() / 2;
  for (size_t i = 0; i < n; ++i)
    testing::expect_close_to_max(grads[n + i], grads[i], "gradient " + std::to_string(i), 1e-3);
}

}  // namespace
}  // namespace toptag
