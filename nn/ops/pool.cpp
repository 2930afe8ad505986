#include "nn/ops/pool.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "nn/check.h"
#include "nn/profile.h"

namespace toptag {

namespace {

// Index (h*W + w) of the first maximum of output pixel (oh, ow)'s window in one plane.
int64_t window_argmax(const float* plane, const PoolGeometry& g, int64_t oh, int64_t ow) {
  const int64_t h0 = oh * g.p.stride - g.p.padding, w0 = ow * g.p.stride - g.p.padding;
  const int64_t h1 = std::min(h0 + g.p.kernel, g.H), w1 = std::min(w0 + g.p.kernel, g.W);
  int64_t best = -1;
  float best_value = -std::numeric_limits<float>::infinity();
  for (int64_t h = std::max<int64_t>(h0, 0); h < h1; ++h)
    for (int64_t w = std::max<int64_t>(w0, 0); w < w1; ++w) {
      const float v = plane[h * g.W + w];
      if (best < 0 || v > best_value || std::isnan(v)) {
        best = h * g.W + w;
        best_value = v;
        if (std::isnan(v)) return best;
      }
    }
  return best;
}

// Channels-last max pool: y (N,P,Q,C) and, when argmax is given, each output's window position
// h*W + w of the first maximum, the tie rule of window_argmax: a later value wins only if larger,
// and the first NaN wins for good.
void maxpool_nhwc_forward(const float* x, const PoolGeometry& g, float* y, int32_t* argmax) {
  const int64_t C = g.C;
#pragma omp parallel for collapse(2) schedule(static) if (g.N * g.P * g.Q * C > 65536)
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t oh = 0; oh < g.P; ++oh)
      for (int64_t ow = 0; ow < g.Q; ++ow) {
        const int64_t at = ((n * g.P + oh) * g.Q + ow) * C;
        float* out = y + at;
        int32_t* index = argmax ? argmax + at : nullptr;
        if (!index) {  // inference
          window_max_nhwc(x + n * g.H * g.W * C, 0, g, oh, ow, out);
          continue;
        }
        const int64_t h0 = oh * g.p.stride - g.p.padding, w0 = ow * g.p.stride - g.p.padding;
        bool first = true;
        for (int64_t h = std::max<int64_t>(h0, 0); h < std::min<int64_t>(h0 + g.p.kernel, g.H); ++h)
          for (int64_t w = std::max<int64_t>(w0, 0); w < std::min<int64_t>(w0 + g.p.kernel, g.W); ++w) {
            const float* in = x + ((n * g.H + h) * g.W + w) * C;
            const auto position = static_cast<int32_t>(h * g.W + w);
            if (first) {
              std::copy_n(in, C, out);
              std::fill_n(index, C, position);
              first = false;
              continue;
            }
            for (int64_t c = 0; c < C; ++c) {
              const bool take = in[c] > out[c] || (std::isnan(in[c]) && !std::isnan(out[c]));
              out[c] = take ? in[c] : out[c];
              index[c] = take ? position : index[c];
            }
          }
      }
}

}  // namespace

PoolGeometry pool_geometry(const char* op, const Shape& s, int64_t N, int64_t C, int64_t H, int64_t W,
                           MaxPool2dParams params) {
  if (params.kernel < 1 || params.stride < 1 || params.padding < 0 || 2 * params.padding > params.kernel)
    fail("{}: invalid kernel {} stride {} padding {}", op, params.kernel, params.stride, params.padding);
  const int64_t P = (H + 2 * params.padding - params.kernel) / params.stride + 1;
  const int64_t Q = (W + 2 * params.padding - params.kernel) / params.stride + 1;
  if (P < 1 || Q < 1) fail("{}: input {} is smaller than the {}x{} window", op, s.str(), params.kernel, params.kernel);
  return {N, C, H, W, P, Q, params};
}

void window_max_nhwc(const float* x, int64_t first_row, const PoolGeometry& g, int64_t oh, int64_t ow, float* out) {
  const int64_t h0 = oh * g.p.stride - g.p.padding, w0 = ow * g.p.stride - g.p.padding;
  bool first = true;
  for (int64_t h = std::max<int64_t>(h0, 0); h < std::min<int64_t>(h0 + g.p.kernel, g.H); ++h)
    for (int64_t w = std::max<int64_t>(w0, 0); w < std::min<int64_t>(w0 + g.p.kernel, g.W); ++w) {
      const float* in = x + ((h - first_row) * g.W + w) * g.C;
      if (first)
        std::copy_n(in, g.C, out);
      else
        max_into(out, in, g.C);
      first = false;
    }
}

Var maxpool2d(const Var& x, MaxPool2dParams params) {
  const Shape& s = x.shape();
  if (s.rank() != 4) fail("maxpool2d: input must be (N,C,H,W), found shape {}", s.str());
  const PoolGeometry g = pool_geometry("maxpool2d", s, s[0], s[1], s[2], s[3], params);
  const int64_t P = g.P, Q = g.Q;
  ProfileScope profile("pool");

  // The forward pass keeps each window's argmax (when a gradient is needed) so that backward only
  // scatters: dx[argmax] += dy (windows overlap: a pixel can win several).
  const bool keep = x.requires_grad() && grad_enabled();
  auto argmax = keep ? std::make_shared<std::vector<int32_t>>(static_cast<size_t>(g.N * g.C * P * Q)) : nullptr;
  Tensor y = Tensor::empty({g.N, g.C, P, Q});
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < g.N * g.C; ++nc) {
    const float* plane = x.value().data() + nc * g.H * g.W;
    float* out = y.data() + nc * P * Q;
    int32_t* index = keep ? argmax->data() + nc * P * Q : nullptr;
    for (int64_t oh = 0; oh < P; ++oh)
      for (int64_t ow = 0; ow < Q; ++ow) {
        const int64_t best = window_argmax(plane, g, oh, ow);
        out[oh * Q + ow] = plane[best];
        if (index) index[oh * Q + ow] = static_cast<int32_t>(best);
      }
  }
  return record_op(std::move(y), {&x}, [argmax, xs = x.slot(), g](const Tensor& gy) {
    ProfileScope profile("pool");
    Tensor dxt = Tensor::zeros({g.N, g.C, g.H, g.W});
#pragma omp parallel for schedule(static)
    for (int64_t nc = 0; nc < g.N * g.C; ++nc) {
      const int32_t* index = argmax->data() + nc * g.P * g.Q;
      const float* grad = gy.data() + nc * g.P * g.Q;
      float* dx = dxt.data() + nc * g.H * g.W;
      for (int64_t i = 0; i < g.P * g.Q; ++i) dx[index[i]] += grad[i];
    }
    add_grad(*xs, std::move(dxt));
  });
}

Var global_avgpool(const Var& x) {
  const Shape& s = x.shape();
  if (s.rank() != 4) fail("global_avgpool: input must be (N,C,H,W), found shape {}", s.str());
  const int64_t NC = s[0] * s[1], L = s[2] * s[3];
  ProfileScope profile("pool");
  Tensor y = Tensor::empty({s[0], s[1]});
  const float* in = x.value().data();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < NC; ++i) {
    float sum = 0.0f;
    for (int64_t j = 0; j < L; ++j) sum += in[i * L + j];
    y.data()[i] = sum / static_cast<float>(L);
  }
  return record_op(std::move(y), {&x}, [shape = s, xs = x.slot()](const Tensor& gy) {
    const int64_t nc = shape[0] * shape[1], l = shape[2] * shape[3];
    // dx[n, c, :, :] = dy[n, c] / (H W)
    ProfileScope profile("pool");
    Tensor dxt = Tensor::empty(shape);
    const float inv = 1.0f / static_cast<float>(l);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nc; ++i) std::fill_n(dxt.data() + i * l, l, gy.data()[i] * inv);
    add_grad(*xs, std::move(dxt));
  });
}

Tensor maxpool_nhwc(const Tensor& x, MaxPool2dParams params) {
  if (x.rank() != 4) fail("maxpool2d: input must be (N,H,W,C), found shape {}", x.shape().str());
  const PoolGeometry g = pool_geometry("maxpool2d", x.shape(), x.dim(0), x.dim(3), x.dim(1), x.dim(2), params);
  ProfileScope profile("pool nhwc");
  Tensor y = Tensor::empty({g.N, g.P, g.Q, g.C});
  maxpool_nhwc_forward(x.data(), g, y.data(), nullptr);
  return y;
}

Var maxpool2d_nhwc(const Var& x, MaxPool2dParams params) {
  if (x.shape().rank() != 4) fail("maxpool2d: input must be (N,H,W,C), found shape {}", x.shape().str());
  const PoolGeometry g =
      pool_geometry("maxpool2d", x.shape(), x.shape()[0], x.shape()[3], x.shape()[1], x.shape()[2], params);
  ProfileScope profile("pool");
  const bool keep = x.requires_grad() && grad_enabled();
  auto argmax = keep ? std::make_shared<std::vector<int32_t>>(static_cast<size_t>(g.N * g.P * g.Q * g.C)) : nullptr;
  Tensor y = Tensor::empty({g.N, g.P, g.Q, g.C});
  maxpool_nhwc_forward(x.value().data(), g, y.data(), keep ? argmax->data() : nullptr);
  return record_op(std::move(y), {&x}, [argmax, xs = x.slot(), g](const Tensor& gy) {
    // dx[n, argmax, c] += dy[n, oh, ow, c]; each thread owns whole images.
    ProfileScope profile("pool");
    Tensor dxt = Tensor::zeros({g.N, g.H, g.W, g.C});
    const int64_t pixels = g.P * g.Q;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < g.N; ++n) {
      float* dx = dxt.data() + n * g.H * g.W * g.C;
      for (int64_t i = 0; i < pixels; ++i) {
        const int32_t* index = argmax->data() + (n * pixels + i) * g.C;
        const float* grad = gy.data() + (n * pixels + i) * g.C;
        for (int64_t c = 0; c < g.C; ++c) dx[index[c] * g.C + c] += grad[c];
      }
    }
    add_grad(*xs, std::move(dxt));
  });
}

Tensor global_avgpool_nhwc(const Tensor& x) {
  if (x.rank() != 4) fail("global_avgpool: input must be (N,H,W,C), found shape {}", x.shape().str());
  const int64_t N = x.dim(0), HW = x.dim(1) * x.dim(2), C = x.dim(3);
  ProfileScope profile("pool nhwc");
  Tensor y = Tensor::zeros({N, C});
#pragma omp parallel for schedule(static) if (x.numel() > 65536)
  for (int64_t n = 0; n < N; ++n) {
    float* out = y.data() + n * C;
    for (int64_t i = 0; i < HW; ++i) {
      const float* in = x.data() + (n * HW + i) * C;
      for (int64_t c = 0; c < C; ++c) out[c] += in[c];
    }
    for (int64_t c = 0; c < C; ++c) out[c] /= static_cast<float>(HW);  // as global_avgpool divides
  }
  return y;
}

Var global_avgpool_nhwc(const Var& x) {
  Tensor y = global_avgpool_nhwc(x.value());
  return record_op(std::move(y), {&x}, [shape = x.shape(), xs = x.slot()](const Tensor& gy) {
    // dx[n, h, w, c] = dy[n, c] / (H W)
    ProfileScope profile("pool");
    const int64_t HW = shape[1] * shape[2], C = shape[3];
    const float inv = 1.0f / static_cast<float>(HW);
    Tensor dxt = Tensor::empty(shape);
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < shape[0]; ++n)
      for (int64_t i = 0; i < HW; ++i)
        for (int64_t c = 0; c < C; ++c) dxt.data()[(n * HW + i) * C + c] = gy.data()[n * C + c] * inv;
    add_grad(*xs, std::move(dxt));
  });
}

Var flatten(const Var& x) {
  const Shape& s = x.shape();
  if (s.rank() < 1) fail("flatten: input must have a batch dimension");
  const int64_t N = s[0], rest = s.numel() / std::max<int64_t>(N, 1);
  Tensor y = x.value().reshape({N, rest});
  return record_op(std::move(y), {&x}, [shape = s, xs = x.slot()](const Tensor& gy) {
    add_grad(*xs, gy.reshape(shape));  // the same values in the input's shape
  });
}

}  // namespace toptag
