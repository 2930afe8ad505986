// Finite-difference gradient checks of every op through the one harness in testing.h.
#include <gtest/gtest-spi.h>

#include <functional>

#include "nn/ops/batchnorm2d.h"
#include "nn/ops/conv2d.h"
#include "nn/ops/elementwise.h"
#include "nn/ops/linear.h"
#include "nn/ops/pool.h"
#include "nn/ops/softmax.h"
#include "testing.h"

namespace toptag {
namespace {

using testing::expect_gradients_match;
using testing::random_tensor;

TEST(GradCheck, Conv2dAllGeometries) {
  Rng rng(1);
  struct Case {
    int k, stride, pad;
    int64_t h;
  };
  for (Case c : {Case{3, 1, 1, 5}, Case{3, 2, 1, 6}, Case{1, 1, 0, 4}, Case{1, 2, 0, 5}, Case{7, 2, 3, 8}}) {
    Tensor x = random_tensor({2, 3, c.h, c.h}, rng), w = random_tensor({4, 3, c.k, c.k}, rng, 0.5),
           b = random_tensor({4}, rng);
    expect_gradients_match(
        [&](std::vector<Var>& v) {
          return conv2d(v[0], v[1], &v[2], {c.stride, c.pad});
        },
        {x, w, b}, "conv2d k" + std::to_string(c.k) + " s" + std::to_string(c.stride));
  }
}

TEST(GradCheck, Conv2dBatchedPathWithLargeBatch) {
  // Many small images go through the batched (channel-major) path; check it separately.
  Rng rng(2);
  Tensor x = random_tensor({9, 2, 3, 3}, rng), w = random_tensor({3, 2, 1, 1}, rng);
  expect_gradients_match([](std::vector<Var>& v) { return conv2d(v[0], v[1], {1, 0}); }, {x, w}, "conv2d 1x1 batch 9");
}

TEST(GradCheck, BatchNormTrainingAndEval) {
  Rng rng(3);
  Tensor x = random_tensor({3, 2, 3, 3}, rng, 2.0), gamma = random_tensor({2}, rng), beta = random_tensor({2}, rng);
  Tensor rm = Tensor::zeros({2}), rv = Tensor::full({2}, 1.0f);
  expect_gradients_match([&](std::vector<Var>& v) { return batchnorm2d(v[0], v[1], v[2], rm, rv, {}); },
                         {x, gamma, beta}, "batchnorm2d train");
  BatchNormParams eval;
  eval.training = false;
  rv.fill(0.7f);
  expect_gradients_match([&](std::vector<Var>& v) { return batchnorm2d(v[0], v[1], v[2], rm, rv, eval); },
                         {x, gamma, beta}, "batchnorm2d eval");
}

TEST(GradCheck, ReluAndAdd) {
  Rng rng(4);
  Tensor a = random_tensor({2, 3, 4}, rng), b = random_tensor({2, 3, 4}, rng);
  expect_gradients_match([](std::vector<Var>& v) { return relu(v[0]); }, {a}, "relu");
  expect_gradients_match([](std::vector<Var>& v) { return add(v[0], v[1]); }, {a, b}, "add");
  // An input used twice must receive the sum of both gradients.
  expect_gradients_match([](std::vector<Var>& v) { return add(relu(v[0]), v[0]); }, {a}, "relu(x) + x");
}

// The fused ReLUs (conv epilogue, batch norm, residual add) against the unfused ops, value and gradient.
TEST(GradCheck, FusedReluEqualsTheSeparateOps) {
  Rng rng(7);
  Tensor x = random_tensor({3, 2, 5, 5}, rng), w = random_tensor({4, 2, 3, 3}, rng, 0.5), b = random_tensor({4}, rng);
  expect_gradients_match(
      [](std::vector<Var>& v) {
        return conv2d(v[0], v[1], &v[2], {1, 1, true});
      },
      {x, w, b}, "conv2d + relu");
  Tensor rm = Tensor::zeros({2}), rv = Tensor::full({2}, 1.0f);
  BatchNormParams fused;
  fused.relu = true;
  Tensor gamma = random_tensor({2}, rng), beta = random_tensor({2}, rng);
  expect_gradients_match([&](std::vector<Var>& v) { return batchnorm2d(v[0], v[1], v[2], rm, rv, fused); },
                         {x, gamma, beta}, "batchnorm2d + relu");
  Tensor y = random_tensor({3, 2, 5, 5}, rng);
  expect_gradients_match([](std::vector<Var>& v) { return add_relu(v[0], v[1]); }, {x, y}, "add_relu");
  expect_gradients_match([](std::vector<Var>& v) { return add_relu(v[0], v[0]); }, {x}, "add_relu(x, x)");

  // Fused and separate give the same values and the same gradients, bit for bit.
  auto both = [&](const std::function<Var(const Var&)>& f_fused, const std::function<Var(const Var&)>& f_plain,
                  const std::string& what) {
    Var a(x.clone(), true), c(x.clone(), true);
    Var ya = f_fused(a);
    backward(ya, Tensor::full(ya.shape(), 0.5f));  // (backward clears the tape: one graph at a time)
    Var yc = f_plain(c);
    backward(yc, Tensor::full(yc.shape(), 0.5f));
    testing::expect_close(ya.value(), yc.value(), what + " value", 0, 0);
    ASSERT_TRUE(a.grad().defined() && c.grad().defined()) << what;
    testing::expect_close(a.grad(), c.grad(), what + " gradient", 0, 0);
  };
  Var wv(w), bv(b);
  both(
      [&](const Var& v) {
        return conv2d(v, wv, &bv, {1, 1, true});
      },
      [&](const Var& v) {
        return relu(conv2d(v, wv, &bv, {1, 1}));
      },
      "conv2d + relu");
  both([&](const Var& v) { return add_relu(v, Var(y)); }, [&](const Var& v) { return relu(add(v, Var(y))); },
       "add_relu");
}

TEST(GradCheck, Pools) {
  Rng rng(5);
  Tensor x = random_tensor({2, 2, 7, 7}, rng);
  expect_gradients_match([](std::vector<Var>& v) { return maxpool2d(v[0], {3, 2, 1}); }, {x}, "maxpool2d");
  expect_gradients_match([](std::vector<Var>& v) { return global_avgpool(v[0]); }, {x}, "global_avgpool");
  expect_gradients_match([](std::vector<Var>& v) { return flatten(v[0]); }, {x}, "flatten");
}

TEST(GradCheck, LinearSoftmaxCrossEntropy) {
  Rng rng(6);
  Tensor x = random_tensor({4, 5}, rng), w = random_tensor({3, 5}, rng), b = random_tensor({3}, rng);
  expect_gradients_match([](std::vector<Var>& v) { return linear(v[0], v[1], &v[2]); }, {x, w, b}, "linear");
  expect_gradients_match([](std::vector<Var>& v) { return softmax(v[0]); }, {x}, "softmax");
  const std::vector<int64_t> labels = {0, 4, 2, 1};
  expect_gradients_match([&](std::vector<Var>& v) { return softmax_cross_entropy(v[0], labels); }, {x},
                         "softmax_cross_entropy");
}

// Two slots given the same buffer (both inputs of a sum) share it until one of them adds to it: the
// sum goes to a buffer of its own, and neither the other slot's gradient nor the caller's tensor
// changes. mutable_grad() hands out a buffer of the slot's own.
TEST(AddGrad, SharedGradientsAreCopiedOnWrite) {
  GradSlot a, b;
  const Tensor d = Tensor::full({5}, 2.0f);
  add_grad(a, d);
  add_grad(b, d);
  EXPECT_TRUE(a.grad.shares_storage_with(d)) << "the first delivery adopts the buffer";
  EXPECT_EQ(grad_to_add_into(a, d.shape()), nullptr) << "a shared buffer is not one to add into";
  add_grad(a, Tensor::full({5}, 1.0f));
  for (int64_t i = 0; i < 5; ++i) {
    EXPECT_EQ(a.grad.data()[i], 3.0f);
    EXPECT_EQ(b.grad.data()[i], 2.0f) << "the other slot's gradient changed";
    EXPECT_EQ(d.data()[i], 2.0f) << "the caller's tensor changed";
  }
  ASSERT_NE(grad_to_add_into(a, d.shape()), nullptr) << "the sum's buffer is the slot's own";
  EXPECT_EQ(grad_to_add_into(a, Shape{4}), nullptr) << "another shape";

  Var v = Var::parameter(Tensor::zeros({5}));
  add_grad(*v.slot(), d);
  v.mutable_grad().data()[0] = 7.0f;
  EXPECT_EQ(d.data()[0], 2.0f) << "mutable_grad() wrote into a shared buffer";
  EXPECT_EQ(v.grad().data()[0], 7.0f);
}

TEST(GradCheck, HarnessCatchesAWrongGradient) {
  // A deliberately wrong backward (2x the true gradient) must fail the check.
  auto wrong_double = [](std::vector<Var>& v) {
    Tensor y = v[0].value().clone();
    return record_op(std::move(y), {&v[0]}, [s = v[0].slot()](const Tensor& gy) {
      Tensor dx = Tensor::empty(gy.shape());
      for (int64_t i = 0; i < gy.numel(); ++i) dx.data()[i] = 2 * gy.data()[i];
      add_grad(*s, std::move(dx));
    });
  };
  Rng rng(7);
  Tensor x = random_tensor({6}, rng);
  ::testing::TestPartResultArray failures;
  {
    ::testing::ScopedFakeTestPartResultReporter capture(&failures);
    expect_gradients_match(wrong_double, {x}, "identity with a wrong gradient");
  }
  ASSERT_GT(failures.size(), 0);
  EXPECT_NE(std::string(failures.GetTestPartResult(0).message()).find("analytic"), std::string::npos);
}

}  // namespace
}  // namespace toptag
