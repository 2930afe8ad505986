// Every op against PyTorch 1.13 (tests/data/torch_ops_golden.h5, float64 reference values).
#include "nn/ops/batchnorm2d.h"
#include "nn/ops/conv2d.h"
#include "nn/ops/linear.h"
#include "nn/ops/pool.h"
#include "nn/ops/softmax.h"
#include "nn/resnet.h"
#include "testing.h"
#include "training/adam.h"

namespace toptag {
namespace {

using testing::expect_close;
using testing::Golden;

class GoldenTest : public ::testing::Test {
 protected:
  Golden golden;
};

class ConvGolden : public GoldenTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(ConvGolden, ForwardAndBackward) {
  const std::string g = GetParam();
  Conv2dParams params{static_cast<int>(golden.attr(g, "stride")), static_cast<int>(golden.attr(g, "padding"))};
  Var x(golden.get(g, "x"), true), w(golden.get(g, "weight"), true);
  Var y = conv2d(x, w, params);
  expect_close(y.value(), golden.get(g, "y"), g + " y");
  backward(y, golden.get(g, "gy"));
  expect_close(x.grad(), golden.get(g, "gx"), g + " gx");
  expect_close(w.grad(), golden.get(g, "gweight"), g + " gweight");
}

INSTANTIATE_TEST_SUITE_P(AllShapes, ConvGolden,
                         ::testing::Values("conv2d_k3_s1_p1", "conv2d_k3_s2_p1", "conv2d_k1_s1_p0", "conv2d_k1_s2_p0",
                                           "conv2d_k7_s2_p3"));

TEST_F(GoldenTest, BatchNormTrainStepThenEval) {
  const std::string g = "batchnorm2d";
  Var x(golden.get(g, "x"), true);
  Var gamma = Var::parameter(golden.get(g, "weight")), beta = Var::parameter(golden.get(g, "bias"));
  const int64_t C = gamma.shape()[0];
  Tensor running_mean = Tensor::zeros({C}), running_var = Tensor::full({C}, 1.0f);
  Var y = batchnorm2d(x, gamma, beta, running_mean, running_var, {});
  expect_close(y.value(), golden.get(g, "y"), "bn y");
  backward(y, golden.get(g, "gy"));
  expect_close(x.grad(), golden.get(g, "gx"), "bn gx");
  expect_close(gamma.grad(), golden.get(g, "gweight"), "bn gweight");
  expect_close(beta.grad(), golden.get(g, "gbias"), "bn gbias");
  expect_close(running_mean, golden.get(g, "running_mean"), "bn running_mean");
  expect_close(running_var, golden.get(g, "running_var"), "bn running_var");

  BatchNormParams eval;
  eval.training = false;
  Var y_eval = batchnorm2d(Var(golden.get(g, "x_eval")), gamma, beta, running_mean, running_var, eval);
  expect_close(y_eval.value(), golden.get(g, "y_eval"), "bn y_eval");
}

TEST_F(GoldenTest, MaxPool) {
  const std::string g = "maxpool2d_k3_s2_p1";
  Var x(golden.get(g, "x"), true);
  Var y = maxpool2d(x, {3, 2, 1});
  expect_close(y.value(), golden.get(g, "y"), "maxpool y");
  backward(y, golden.get(g, "gy"));
  expect_close(x.grad(), golden.get(g, "gx"), "maxpool gx");
}

TEST_F(GoldenTest, GlobalAvgPool) {
  const std::string g = "global_avgpool";
  Var x(golden.get(g, "x"), true);
  Var y = global_avgpool(x);
  expect_close(y.value(), golden.get(g, "y"), "avgpool y");
  backward(y, golden.get(g, "gy"));
  expect_close(x.grad(), golden.get(g, "gx"), "avgpool gx");
}

TEST_F(GoldenTest, Linear) {
  const std::string g = "linear";
  Var x(golden.get(g, "x"), true);
  Var w = Var::parameter(golden.get(g, "weight")), b = Var::parameter(golden.get(g, "bias"));
  Var y = linear(x, w, &b);
  expect_close(y.value(), golden.get(g, "y"), "linear y");
  backward(y, golden.get(g, "gy"));
  expect_close(x.grad(), golden.get(g, "gx"), "linear gx");
  expect_close(w.grad(), golden.get(g, "gweight"), "linear gweight");
  expect_close(b.grad(), golden.get(g, "gbias"), "linear gbias");
}

TEST_F(GoldenTest, CrossEntropy) {
  const std::string g = "cross_entropy";
  Var z(golden.get(g, "logits"), true);
  std::vector<int64_t> labels = golden.get_int64(g, "labels");
  Var loss = softmax_cross_entropy(z, labels);
  expect_close(loss.value().reshape({}), golden.get(g, "loss"), "cross-entropy loss");
  backward(loss);
  expect_close(z.grad(), golden.get(g, "glogits"), "cross-entropy glogits");
}

TEST_F(GoldenTest, StridedBottleneckWithDownsample) {
  const std::string g = "bottleneck_stride2";
  Tensor x0 = golden.get(g, "x");
  Rng rng(0);
  Block block(BlockKind::bottleneck, x0.dim(1), golden.get(g, "params/conv1.weight").dim(0), 2, rng);
  StateList state;
  block.collect("", state);
  ASSERT_EQ(state.parameters.size(), 12u);
  for (auto& p : state.parameters) p.var->value().copy_from(golden.get(g, "params/" + p.name));

  Var x(x0, true);
  Var y = block.forward(x);
  expect_close(y.value(), golden.get(g, "y"), "bottleneck y");
  backward(y, golden.get(g, "gy"));
  expect_close(x.grad(), golden.get(g, "gx"), "bottleneck gx", 2e-4);
  for (auto& p : state.parameters)
    expect_close(p.var->grad(), golden.get(g, "grads/" + p.name), "grad " + p.name, 2e-4);
  for (auto& b : state.buffers) expect_close(*b.tensor, golden.get(g, "buffers_after/" + b.name), b.name);
}

TEST_F(GoldenTest, AdamThreeSteps) {
  Var w = Var::parameter(golden.get("adam", "w0"));
  Adam adam({{"w", &w}}, AdamOptions{});
  for (int step = 0; step < 3; ++step) {
    adam.zero_grad();
    w.mutable_grad().copy_from(golden.get("adam", "grad" + std::to_string(step)));
    adam.step();
    expect_close(w.value(), golden.get("adam", "w" + std::to_string(step + 1)), "adam w" + std::to_string(step + 1),
                 1e-5, 1e-6);
  }
}

}  // namespace
}  // namespace toptag
