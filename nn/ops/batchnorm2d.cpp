#include "nn/ops/batchnorm2d.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "nn/check.h"
#include "nn/profile.h"

namespace toptag {

namespace {

CrossBatchSum cross_batch_sum;  // set only in a data-parallel run with synchronised batch norm

// Per-channel mean and biased variance over (N, H, W) (and over every process's batch when batch
// norm is synchronised): two passes (sum, then squared deviations from the mean) so a large mean
// cannot cancel away the variance; float partials per plane, double across planes. Returns the
// number of values per channel the statistics cover.
int64_t batch_statistics(const Tensor& x, Tensor& mean, Tensor& var) {
  const int64_t N = x.dim(0), C = x.dim(1), L = x.dim(2) * x.dim(3);
  std::vector<double> sums(static_cast<size_t>(C + 1));
  auto plane_sums = [&](const auto& term) {
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      double sum = 0.0;
      for (int64_t n = 0; n < N; ++n) {
        const float* plane = x.data() + (n * C + c) * L;
        float s = 0.0f;
        for (int64_t i = 0; i < L; ++i) s += term(plane[i], c);
        sum += s;
      }
      sums[static_cast<size_t>(c)] = sum;
    }
  };
  plane_sums([](float v, int64_t) { return v; });
  sums[static_cast<size_t>(C)] = static_cast<double>(N * L);
  if (cross_batch_sum) cross_batch_sum(sums);
  const double count = sums[static_cast<size_t>(C)];
  for (int64_t c = 0; c < C; ++c) mean.data()[c] = static_cast<float>(sums[static_cast<size_t>(c)] / count);
  plane_sums([&](float v, int64_t c) { return (v - mean.data()[c]) * (v - mean.data()[c]); });
  sums[static_cast<size_t>(C)] = 0;
  if (cross_batch_sum) cross_batch_sum(sums);
  for (int64_t c = 0; c < C; ++c) var.data()[c] = static_cast<float>(sums[static_cast<size_t>(c)] / count);
  return static_cast<int64_t>(count);
}

// y = (x - mean) * invstd * gamma + beta, per channel (and max(0, y) with relu).
Tensor normalize(const Tensor& x, const Tensor& mean, const Tensor& invstd, const Tensor& gamma, const Tensor& beta,
                 bool relu) {
  const int64_t N = x.dim(0), C = x.dim(1), L = x.dim(2) * x.dim(3);
  Tensor y = Tensor::empty(x.shape());
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const float scale = invstd.data()[c] * gamma.data()[c];
      const float shift = beta.data()[c] - mean.data()[c] * scale;
      const float* in = x.data() + (n * C + c) * L;
      float* out = y.data() + (n * C + c) * L;
      if (relu)
        for (int64_t i = 0; i < L; ++i) out[i] = std::max(in[i] * scale + shift, 0.0f);
      else
        for (int64_t i = 0; i < L; ++i) out[i] = in[i] * scale + shift;
    }
  return y;
}

// Backward with xhat = (x - mean) * invstd and M = N*H*W elements per channel:
//   dgamma += sum(dy * xhat),  dbeta += sum(dy)
//   training: dx = gamma * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat))
//   eval:     dx = gamma * invstd * dy            (mean and invstd are constants)
// With a fused ReLU (y defined), dy is first masked: dy * (y > 0).
void backward(const Tensor& gy, const Tensor& x, const Tensor& y, const Tensor& mean, const Tensor& invstd,
              const Tensor& gamma, bool training, int64_t count, GradSlot* x_slot, GradSlot* gamma_slot,
              GradSlot* beta_slot) {
  ProfileScope profile("batchnorm backward");
  const int64_t N = x.dim(0), C = x.dim(1), L = x.dim(2) * x.dim(3);
  const bool relu = y.defined();
  auto masked = [&](const float* g, const float* out, int64_t i) { return relu && !(out[i] > 0.0f) ? 0.0f : g[i]; };
  Tensor dx = x_slot ? Tensor::empty(x.shape()) : Tensor(), dgamma = Tensor::empty({C}), dbeta = Tensor::empty({C});
  std::vector<double> sums(static_cast<size_t>(2 * C));  // sum(dy), sum(dy * xhat) per channel
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    const float mu = mean.data()[c], is = invstd.data()[c];
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const float* g = gy.data() + (n * C + c) * L;
      const float* in = x.data() + (n * C + c) * L;
      const float* out = relu ? y.data() + (n * C + c) * L : nullptr;
      float s = 0.0f, sx = 0.0f;
      for (int64_t i = 0; i < L; ++i) {
        const float gi = masked(g, out, i);
        s += gi;
        sx += gi * (in[i] - mu);
      }
      sum_dy += s;
      sum_dy_xhat += sx;
    }
    sums[static_cast<size_t>(c)] = sum_dy;
    sums[static_cast<size_t>(C + c)] = sum_dy_xhat * is;
    dgamma.data()[c] = static_cast<float>(sum_dy_xhat * is);  // this process's part
    dbeta.data()[c] = static_cast<float>(sum_dy);
  }
  // Synchronised: dx depends on the sums over every process's batch (x's statistics did too).
  if (x_slot && training && cross_batch_sum) cross_batch_sum(sums);
  if (x_slot) {
    const double M = static_cast<double>(count);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      const float mu = mean.data()[c], is = invstd.data()[c], k = gamma.data()[c] * is;
      const float mean_dy = training ? static_cast<float>(sums[static_cast<size_t>(c)] / M) : 0.0f;
      const float mean_dy_xhat = training ? static_cast<float>(sums[static_cast<size_t>(C + c)] / M) : 0.0f;
      for (int64_t n = 0; n < N; ++n) {
        const float* g = gy.data() + (n * C + c) * L;
        const float* in = x.data() + (n * C + c) * L;
        const float* yo = relu ? y.data() + (n * C + c) * L : nullptr;
        float* out = dx.data() + (n * C + c) * L;
        for (int64_t i = 0; i < L; ++i) {
          const float xhat = (in[i] - mu) * is;
          out[i] = k * (masked(g, yo, i) - mean_dy - xhat * mean_dy_xhat);
        }
      }
    }
  }
  if (x_slot) add_grad(*x_slot, std::move(dx));
  if (gamma_slot) add_grad(*gamma_slot, std::move(dgamma));
  if (beta_slot) add_grad(*beta_slot, std::move(dbeta));
}

}  // namespace

void set_batchnorm_cross_batch_sum(CrossBatchSum sum) {
  cross_batch_sum = std::move(sum);
}

Var batchnorm2d(const Var& x, const Var& gamma, const Var& beta, Tensor& running_mean, Tensor& running_var,
                BatchNormParams params) {
  ProfileScope profile("batchnorm forward");
  if (x.shape().rank() != 4) fail("batchnorm2d: input must be (N,C,H,W), found shape {}", x.shape().str());
  const int64_t C = x.shape()[1];
  expect_shape(gamma.value(), Shape{C}, "batchnorm2d weight");
  expect_shape(beta.value(), Shape{C}, "batchnorm2d bias");
  expect_shape(running_mean, Shape{C}, "batchnorm2d running_mean");
  expect_shape(running_var, Shape{C}, "batchnorm2d running_var");
  const int64_t count = x.shape().numel() / C;
  if (params.training && count < 2)
    fail("batchnorm2d: training needs more than one value per channel, input shape {}", x.shape().str());

  Tensor mean = Tensor::empty({C}), invstd = Tensor::empty({C});
  int64_t covered = count;  // values per channel the statistics cover (every process's, when synchronised)
  if (params.training) {
    Tensor var = Tensor::empty({C});
    covered = batch_statistics(x.value(), mean, var);
    const float m = params.momentum, unbias = static_cast<float>(covered) / static_cast<float>(covered - 1);
    for (int64_t c = 0; c < C; ++c) {
      invstd.data()[c] = 1.0f / std::sqrt(var.data()[c] + params.eps);
      running_mean.data()[c] = (1 - m) * running_mean.data()[c] + m * mean.data()[c];
      running_var.data()[c] = (1 - m) * running_var.data()[c] + m * var.data()[c] * unbias;
    }
  } else {
    mean.copy_from(running_mean);
    for (int64_t c = 0; c < C; ++c) invstd.data()[c] = 1.0f / std::sqrt(running_var.data()[c] + params.eps);
  }
  Tensor y = normalize(x.value(), mean, invstd, gamma.value(), beta.value(), params.relu);
  Tensor saved_y = params.relu ? y : Tensor();  // the ReLU mask
  return record_op(
      std::move(y), {&x, &gamma, &beta},
      [xv = x.value(), yv = std::move(saved_y), mean, invstd, gv = gamma.value(), training = params.training, covered,
       xs = x.slot(), gs = gamma.slot(), bs = beta.slot()](const Tensor& gy) {
        backward(gy, xv, yv, mean, invstd, gv, training, covered, xs.get(), gs.get(), bs.get());
      });
}

}  // namespace toptag
