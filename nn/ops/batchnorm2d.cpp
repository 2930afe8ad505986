#include "nn/ops/batchnorm2d.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "nn/check.h"
#include "nn/ops/channel_sums.h"
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

// The normalisation one call applies: y = (x - mean) * invstd * gamma + beta, per channel.
struct Normalization {
  Tensor mean, invstd;
  int64_t covered = 0;  // values per channel the statistics cover (every process's, when synchronised)
};

// Checks the arguments of a batch norm over C channels and count values per channel, then: training,
// the batch's statistics (and the running ones updated); eval, the running statistics.
// batch_stats(mean, var): the layout's batch statistics, the mean and the biased variance; returns the
// values they cover.
template <class BatchStatistics>
Normalization normalization(const Var& x, int64_t C, const Var& gamma, const Var& beta, Tensor& running_mean,
                            Tensor& running_var, BatchNormParams params, const BatchStatistics& batch_stats) {
  expect_shape(gamma.value(), Shape{C}, "batchnorm2d weight");
  expect_shape(beta.value(), Shape{C}, "batchnorm2d bias");
  expect_shape(running_mean, Shape{C}, "batchnorm2d running_mean");
  expect_shape(running_var, Shape{C}, "batchnorm2d running_var");
  const int64_t count = x.shape().numel() / C;
  if (params.training && count < 2)
    fail("batchnorm2d: training needs more than one value per channel, input shape {}", x.shape().str());

  Normalization norm{Tensor::empty({C}), Tensor::empty({C}), count};
  if (params.training) {
    Tensor var = Tensor::empty({C});
    norm.covered = batch_stats(norm.mean, var);
    const float m = params.momentum, unbias = static_cast<float>(norm.covered) / static_cast<float>(norm.covered - 1);
    for (int64_t c = 0; c < C; ++c) {
      norm.invstd.data()[c] = 1.0f / std::sqrt(var.data()[c] + params.eps);
      running_mean.data()[c] = (1 - m) * running_mean.data()[c] + m * norm.mean.data()[c];
      running_var.data()[c] = (1 - m) * running_var.data()[c] + m * var.data()[c] * unbias;
    }
  } else {
    norm.mean.copy_from(running_mean);
    for (int64_t c = 0; c < C; ++c) norm.invstd.data()[c] = 1.0f / std::sqrt(running_var.data()[c] + params.eps);
  }
  return norm;
}

// --- channels-last: x is a (rows, C) matrix of pixels ---------------------------------------------
// The loops take raw __restrict pointers, so that the compiler vectorises them along the channels.

// One pass over memory: each cache-sized block of rows is summed, then its squared deviations from
// its own mean are summed while it is still in cache; the blocks are merged in double by Chan, Golub
// and LeVeque's pairwise update of (count, mean, M2), in block order. No sum of squares, so no
// cancellation whatever the mean. A block's mean is its first row plus the mean of the differences
// from it, so that a float sum of raw values (1e-4 relative error over 2048 of them) does not blur a
// mean much larger than the spread; an atypical first row costs only its own block some precision. Synchronised, the
// two exchanges of batch_statistics: sum(x) for the global mean, then each process's M2 about it, M2 + n (mean_local -
// mean)^2.
int64_t batch_statistics_nhwc(const Tensor& x, Tensor& mean, Tensor& var) {
  const int64_t C = x.dim(3), rows = x.numel() / C;
  const float* px = x.data();
  // acc: the mean's offset from the block's first row, then the squared deviations from the mean.
  const ChannelBlocks blocks = channel_block_sums(rows, C, 2, [px, C](int64_t begin, int64_t end, float* acc) {
    float* __restrict offset = acc;
    float* __restrict deviations = acc + C;
    const float* __restrict first = px + begin * C;
    for (int64_t row = begin + 1; row < end; ++row) {
      const float* __restrict in = px + row * C;
      for (int64_t c = 0; c < C; ++c) offset[c] += in[c] - first[c];
    }
    const float inv_count = 1.0f / static_cast<float>(end - begin);
    for (int64_t c = 0; c < C; ++c) offset[c] *= inv_count;
    // The deviations from the mean as (x - first) - offset: x - first is exact for nearby values, and
    // first + offset is never rounded to a float (which would add n * rounding^2 to a tiny variance).
    for (int64_t row = begin; row < end; ++row) {
      const float* __restrict in = px + row * C;
      for (int64_t c = 0; c < C; ++c) {
        const float d = in[c] - first[c] - offset[c];
        deviations[c] += d * d;
      }
    }
  });
  // The merge's weights depend on the block only: nb / (n + nb) and n nb / (n + nb), n the rows of
  // the blocks before it. Worked out once a block, they leave the channels' loop without a division
  // (two a channel and block had made the merge, on one thread, half as long as the statistics' pass).
  std::vector<double> local_mean(static_cast<size_t>(C), 0.0), m2(static_cast<size_t>(C), 0.0);
  double n_before = 0;
  for (int64_t b = 0; b < blocks.blocks; ++b) {
    const double nb = static_cast<double>(blocks.rows_in(b)), n_after = n_before + nb;
    const double mean_weight = nb / n_after, spread_weight = n_before * nb / n_after;
    const float* __restrict first = px + b * blocks.block_rows * C;
    const double* __restrict offset = blocks.partial.data() + b * blocks.width;
    const double* __restrict deviations = offset + C;
    double* __restrict mu = local_mean.data();
    double* __restrict sq = m2.data();
    for (int64_t c = 0; c < C; ++c) {
      const double delta = static_cast<double>(first[c]) + offset[c] - mu[c];
      mu[c] += delta * mean_weight;
      sq[c] += deviations[c] + delta * delta * spread_weight;
    }
    n_before = n_after;
  }
  const double n = static_cast<double>(rows);
  double count = n;
  if (cross_batch_sum) {
    std::vector<double> sums(static_cast<size_t>(C + 1));
    for (int64_t c = 0; c < C; ++c) sums[static_cast<size_t>(c)] = n * local_mean[static_cast<size_t>(c)];
    sums[static_cast<size_t>(C)] = n;
    cross_batch_sum(sums);
    count = sums[static_cast<size_t>(C)];
    for (int64_t c = 0; c < C; ++c) {
      const double global_mean = sums[static_cast<size_t>(c)] / count;
      const double shift = local_mean[static_cast<size_t>(c)] - global_mean;
      local_mean[static_cast<size_t>(c)] = global_mean;
      m2[static_cast<size_t>(c)] += n * shift * shift;
    }
    sums.assign(m2.begin(), m2.end());
    sums.push_back(0.0);
    cross_batch_sum(sums);
    m2.assign(sums.begin(), sums.begin() + C);
  }
  for (int64_t c = 0; c < C; ++c) {
    mean.data()[c] = static_cast<float>(local_mean[static_cast<size_t>(c)]);
    var.data()[c] = static_cast<float>(m2[static_cast<size_t>(c)] / count);
  }
  return static_cast<int64_t>(count);
}

// y = x * scale + shift along each pixel's channels (and max(0, y) with relu).
template <bool kRelu>
void scale_shift_rows(const float* __restrict x, int64_t rows, int64_t C, const float* __restrict scale,
                      const float* __restrict shift, float* __restrict y) {
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const float* __restrict in = x + row * C;
    float* __restrict out = y + row * C;
    for (int64_t c = 0; c < C; ++c) {
      const float v = in[c] * scale[c] + shift[c];
      out[c] = kRelu ? std::max(v, 0.0f) : v;
    }
  }
}

// y = (x - mean) * invstd * gamma + beta = x * scale + shift.
Tensor normalize_nhwc(const Tensor& x, const Normalization& norm, const Tensor& gamma, const Tensor& beta, bool relu) {
  const int64_t C = x.dim(3), rows = x.numel() / C;
  std::vector<float> scale(static_cast<size_t>(C)), shift(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    scale[static_cast<size_t>(c)] = norm.invstd.data()[c] * gamma.data()[c];
    shift[static_cast<size_t>(c)] = beta.data()[c] - norm.mean.data()[c] * scale[static_cast<size_t>(c)];
  }
  Tensor y = Tensor::empty(x.shape());
  if (relu)
    scale_shift_rows<true>(x.data(), rows, C, scale.data(), shift.data(), y.data());
  else
    scale_shift_rows<false>(x.data(), rows, C, scale.data(), shift.data(), y.data());
  return y;
}

// dy with the fused ReLU's mask applied (dy where y > 0), and the sums sum(dy), sum(dy * (x - mean)).
template <bool kRelu>
std::vector<double> backward_sums(const float* __restrict gy, const float* __restrict x, const float* __restrict y,
                                  const float* __restrict mean, int64_t rows, int64_t C) {
  // The pointers are copied into the lambda: captured by reference, they would be reloaded after
  // every store to acc (which could alias them), and the loop would not vectorise.
  return channel_sums(rows, C, 2, [gy, x, y, mean, C](int64_t begin, int64_t end, float* acc) {
    float* __restrict sum_dy = acc;
    float* __restrict sum_dy_xc = acc + C;
    for (int64_t row = begin; row < end; ++row) {
      const float* __restrict g_row = gy + row * C;
      const float* __restrict x_row = x + row * C;
      const float* __restrict y_row = kRelu ? y + row * C : nullptr;
      for (int64_t c = 0; c < C; ++c) {
        const float g = kRelu && !(y_row[c] > 0.0f) ? 0.0f : g_row[c];
        sum_dy[c] += g;
        sum_dy_xc[c] += g * (x_row[c] - mean[c]);
      }
    }
  });
}

// dx = k * (dy - mean_dy - (x - mean) * invstd * mean_dy_xhat), per channel, dy masked as above.
template <bool kRelu>
void backward_dx(const float* __restrict gy, const float* __restrict x, const float* __restrict y,
                 const float* __restrict mean, const float* __restrict invstd, const float* __restrict k,
                 const float* __restrict mean_dy, const float* __restrict mean_dy_xhat, int64_t rows, int64_t C,
                 float* __restrict dx) {
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t at = row * C;
    for (int64_t c = 0; c < C; ++c) {
      const float g = kRelu && !(y[at + c] > 0.0f) ? 0.0f : gy[at + c];
      const float xhat = (x[at + c] - mean[c]) * invstd[c];
      dx[at + c] = k[c] * (g - mean_dy[c] - xhat * mean_dy_xhat[c]);
    }
  }
}

// backward()'s formulas on channels-last tensors; both sums come from one pass over dy, x (and y).
void backward_nhwc(const Tensor& gy, const Tensor& x, const Tensor& y, const Normalization& norm, const Tensor& gamma,
                   bool training, GradSlot* x_slot, GradSlot* gamma_slot, GradSlot* beta_slot) {
  ProfileScope profile("batchnorm backward");
  const int64_t C = x.dim(3), rows = x.numel() / C;
  const bool relu = y.defined();
  std::vector<double> sums = relu ? backward_sums<true>(gy.data(), x.data(), y.data(), norm.mean.data(), rows, C)
                                  : backward_sums<false>(gy.data(), x.data(), nullptr, norm.mean.data(), rows, C);
  Tensor dgamma = Tensor::empty({C}), dbeta = Tensor::empty({C});
  for (int64_t c = 0; c < C; ++c) {
    sums[static_cast<size_t>(C + c)] *= norm.invstd.data()[c];                // sum(dy * xhat)
    dgamma.data()[c] = static_cast<float>(sums[static_cast<size_t>(C + c)]);  // this process's part
    dbeta.data()[c] = static_cast<float>(sums[static_cast<size_t>(c)]);
  }
  if (x_slot && training && cross_batch_sum) cross_batch_sum(sums);
  if (x_slot) {
    const double M = static_cast<double>(norm.covered);
    std::vector<float> k(static_cast<size_t>(C)), mean_dy(static_cast<size_t>(C)), mean_dy_xhat(static_cast<size_t>(C));
    for (int64_t c = 0; c < C; ++c) {
      k[static_cast<size_t>(c)] = gamma.data()[c] * norm.invstd.data()[c];
      mean_dy[static_cast<size_t>(c)] = training ? static_cast<float>(sums[static_cast<size_t>(c)] / M) : 0.0f;
      mean_dy_xhat[static_cast<size_t>(c)] = training ? static_cast<float>(sums[static_cast<size_t>(C + c)] / M) : 0.0f;
    }
    Tensor dx = Tensor::empty(x.shape());
    (relu ? backward_dx<true> : backward_dx<false>)(gy.data(), x.data(), relu ? y.data() : nullptr, norm.mean.data(),
                                                    norm.invstd.data(), k.data(), mean_dy.data(), mean_dy_xhat.data(),
                                                    rows, C, dx.data());
    add_grad(*x_slot, std::move(dx));
  }
  if (gamma_slot) add_grad(*gamma_slot, std::move(dgamma));
  if (beta_slot) add_grad(*beta_slot, std::move(dbeta));
}

}  // namespace

void set_batchnorm_cross_batch_sum(CrossBatchSum sum) {
  cross_batch_sum = std::move(sum);
}

namespace {

// Both layouts' forward: the statistics, the normalisation and the backward of the layout.
Var batchnorm(const Var& x, const Var& gamma, const Var& beta, Tensor& running_mean, Tensor& running_var,
              BatchNormParams params, bool channels_last) {
  ProfileScope profile("batchnorm forward");
  if (x.shape().rank() != 4)
    fail("batchnorm2d: input must be {}, found shape {}", channels_last ? "(N,H,W,C)" : "(N,C,H,W)", x.shape().str());
  const Normalization norm = normalization(x, x.shape()[channels_last ? 3 : 1], gamma, beta, running_mean, running_var,
                                           params, [&](Tensor& mean, Tensor& var) {
                                             return channels_last ? batch_statistics_nhwc(x.value(), mean, var)
                                                                  : batch_statistics(x.value(), mean, var);
                                           });
  Tensor y = channels_last ? normalize_nhwc(x.value(), norm, gamma.value(), beta.value(), params.relu)
                           : normalize(x.value(), norm.mean, norm.invstd, gamma.value(), beta.value(), params.relu);
  Tensor saved_y = params.relu ? y : Tensor();  // the ReLU mask
  return record_op(std::move(y), {&x, &gamma, &beta},
                   [xv = x.value(), yv = std::move(saved_y), norm, gv = gamma.value(), training = params.training,
                    channels_last, xs = x.slot(), gs = gamma.slot(), bs = beta.slot()](const Tensor& gy) {
                     if (channels_last)
                       backward_nhwc(gy, xv, yv, norm, gv, training, xs.get(), gs.get(), bs.get());
                     else
                       backward(gy, xv, yv, norm.mean, norm.invstd, gv, training, norm.covered, xs.get(), gs.get(),
                                bs.get());
                   });
}

}  // namespace

Var batchnorm2d(const Var& x, const Var& gamma, const Var& beta, Tensor& running_mean, Tensor& running_var,
                BatchNormParams params) {
  return batchnorm(x, gamma, beta, running_mean, running_var, params, false);
}

Var batchnorm2d_nhwc(const Var& x, const Var& gamma, const Var& beta, Tensor& running_mean, Tensor& running_var,
                     BatchNormParams params) {
  return batchnorm(x, gamma, beta, running_mean, running_var, params, true);
}

}  // namespace toptag
