// The fast convolution (batched im2col + sgemm, per-image GEMM, 1x1 without im2col) against the
// direct reference, over the geometries ResNet uses and the paths the kernel chooses between.
#include "nn/ops/conv2d.h"
#include "nn/parallel.h"
#include "testing.h"

namespace toptag {
namespace {

struct ConvCase {
  int64_t n, c, h, k;
  int kernel, stride, pad;
};

class ConvVsReference : public ::testing::TestWithParam<ConvCase> {};

TEST_P(ConvVsReference, ForwardMatches) {
  const ConvCase c = GetParam();
  Rng rng(11);
  Tensor x = testing::random_tensor({c.n, c.c, c.h, c.h}, rng);
  Tensor w = testing::random_tensor({c.k, c.c, c.kernel, c.kernel}, rng, 0.2);
  Tensor b = testing::random_tensor({c.k}, rng);
  Var y = conv2d(Var(x), Var(w), nullptr, {c.stride, c.pad});
  testing::expect_close(y.value(), conv2d_forward_ref(x, w, nullptr, {c.stride, c.pad}), "conv forward", 1e-4, 1e-5);
  Var b_var(b);
  Var yb = conv2d(Var(x), Var(w), &b_var, {c.stride, c.pad});
  testing::expect_close(yb.value(), conv2d_forward_ref(x, w, &b, {c.stride, c.pad}), "conv forward + bias", 1e-4, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(ResNetGeometries, ConvVsReference,
                         ::testing::Values(ConvCase{3, 1, 40, 8, 7, 2, 3},   // stem at 40x40
                                           ConvCase{4, 8, 10, 8, 3, 1, 1},   // 3x3 batched path
                                           ConvCase{4, 8, 10, 16, 1, 1, 0},  // 1x1 batched (channel-major copy)
                                           ConvCase{2, 8, 20, 16, 1, 1, 0},  // 1x1 per-image GEMM (400 pixels)
                                           ConvCase{2, 8, 20, 8, 3, 1, 1},   // 3x3 per-image (400 pixels)
                                           ConvCase{5, 8, 5, 16, 1, 2, 0},   // strided 1x1 downsample
                                           ConvCase{5, 8, 5, 8, 3, 2, 1},    // strided 3x3
                                           ConvCase{1, 3, 2, 4, 3, 1, 1},    // tiny image, padding everywhere
                                           ConvCase{2, 1, 2, 4, 7, 2,
                                                    3},  // stem on a 2x2 image: most taps fall in padding
                                           ConvCase{2, 2, 3, 4, 7, 2, 3}));

TEST(Conv, ResultsDoNotDependOnThreadCount) {
  Rng rng(12);
  Tensor x = testing::random_tensor({6, 16, 10, 10}, rng), w = testing::random_tensor({32, 16, 3, 3}, rng, 0.1);
  set_num_threads(1);
  Tensor one = conv2d(Var(x), Var(w), {1, 1}).value().clone();
  set_num_threads(2);
  Tensor two = conv2d(Var(x), Var(w), {1, 1}).value();
  set_num_threads(0);
  testing::expect_close(two, one, "1 vs 2 threads", 1e-5, 1e-6);
}

TEST(Conv, ShapeErrorsNameTheShapes) {
  Var x(Tensor::zeros({1, 3, 8, 8})), w(Tensor::zeros({4, 2, 3, 3}));
  try {
    conv2d(x, w, {1, 1});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("3 channels"), std::string::npos) << e.what();
  }
  Var tiny(Tensor::zeros({1, 2, 2, 2}));
  EXPECT_THROW(conv2d(tiny, Var(Tensor::zeros({4, 2, 7, 7})), {1, 0}), Error);
}

}  // namespace
}  // namespace toptag
