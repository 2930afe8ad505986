#include "nn/ops/conv2d.h"

#include <algorithm>
#include <cstring>

#include "nn/check.h"
#include "nn/gemm.h"
#include "nn/ops/elementwise.h"
#include "nn/profile.h"

namespace toptag {

namespace {

// Geometry of one convolution, shared by forward and backward.
struct ConvGeometry {
  int64_t N, C, H, W, K, R, S, P, Q;
  int stride, pad;
  bool relu;
  int64_t crs() const { return C * R * S; }
  int64_t pq() const { return P * Q; }
  bool is_pointwise() const { return R == 1 && S == 1 && stride == 1 && pad == 0; }
};

ConvGeometry geometry(const Shape& x, const Shape& w, Conv2dParams p) {
  Shape y = conv2d_output_shape(x, w, p);
  return {x[0], x[1], x[2], x[3], w[0], w[2], w[3], y[2], y[3], p.stride, p.padding, p.relu};
}

// A 1x1 stride-1 conv with a large image is one GEMM per image straight on the NCHW data. Smaller
// images are batched: B images side by side in one (C*R*S, B*P*Q) column matrix, so a single large
// GEMM keeps both cores busy and reads the weights once per batch instead of once per image.
constexpr int64_t kPerImageMinPixels = 1024;

int64_t images_per_chunk(const ConvGeometry& g) {
  if (g.pq() >= kPerImageMinPixels) return 1;
  return images_within_column_budget(std::max(g.crs(), g.K) * g.pq(), g.N);
}

int64_t floor_div(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// col[(c,r,s), b*PQ + p*Q + q] = x[b, c, p*stride - pad + r, q*stride - pad + s] (0 outside).
void im2col(const float* x, const ConvGeometry& g, int64_t B, float* col) {
  ProfileScope profile("conv im2col");
  const int64_t rows = g.crs(), ld = B * g.pq(), image = g.C * g.H * g.W;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t c = row / (g.R * g.S), r = (row / g.S) % g.R, s = row % g.S;
    // Output columns q whose input column q*stride - pad + s lies inside [0, W).
    const int64_t q_begin = std::clamp<int64_t>(floor_div(g.pad - s + g.stride - 1, g.stride), 0, g.Q);
    const int64_t q_end = std::clamp<int64_t>(floor_div(g.W - 1 + g.pad - s, g.stride) + 1, q_begin, g.Q);
    for (int64_t b = 0; b < B; ++b) {
      const float* plane = x + b * image + c * g.H * g.W;
      float* out = col + row * ld + b * g.pq();
      for (int64_t p = 0; p < g.P; ++p) {
        const int64_t h = p * g.stride - g.pad + r;
        float* out_row = out + p * g.Q;
        if (h < 0 || h >= g.H) {
          std::fill_n(out_row, g.Q, 0.0f);
          continue;
        }
        const float* in_row = plane + h * g.W - g.pad + s;  // in_row[q * stride] is input column q*stride-pad+s
        std::fill(out_row, out_row + q_begin, 0.0f);
        if (g.stride == 1) {
          std::copy(in_row + q_begin, in_row + q_end, out_row + q_begin);
        } else {
          for (int64_t q = q_begin; q < q_end; ++q) out_row[q] = in_row[q * g.stride];
        }
        std::fill(out_row + q_end, out_row + g.Q, 0.0f);
      }
    }
  }
}

// The adjoint of im2col: dx[b, c, h, w] += every column entry that was read from it.
void col2im_add(const float* col, const ConvGeometry& g, int64_t B, float* dx) {
  ProfileScope profile("conv col2im");
  const int64_t ld = B * g.pq(), image = g.C * g.H * g.W;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < g.C; ++c) {  // each thread owns whole input channels: no write races
    for (int64_t r = 0; r < g.R; ++r) {
      for (int64_t s = 0; s < g.S; ++s) {
        const float* in = col + ((c * g.R + r) * g.S + s) * ld;
        for (int64_t b = 0; b < B; ++b) {
          float* plane = dx + b * image + c * g.H * g.W;
          const float* src = in + b * g.pq();
          for (int64_t p = 0; p < g.P; ++p) {
            const int64_t h = p * g.stride - g.pad + r;
            if (h < 0 || h >= g.H) continue;
            float* out_row = plane + h * g.W;
            for (int64_t q = 0; q < g.Q; ++q) {
              const int64_t w = q * g.stride - g.pad + s;
              if (w >= 0 && w < g.W) out_row[w] += src[p * g.Q + q];
            }
          }
        }
      }
    }
  }
}

// (B, K, L) -> (K, B*L): image-major to channel-major.
void to_channel_major(const float* src, int64_t B, int64_t K, int64_t L, float* dst) {
  ProfileScope profile("conv layout");
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t k = 0; k < K; ++k)
    for (int64_t b = 0; b < B; ++b) std::memcpy(dst + (k * B + b) * L, src + (b * K + k) * L, L * sizeof(float));
}

// (K, B*L) -> (B, K, L).
void from_channel_major(const float* src, int64_t B, int64_t K, int64_t L, float* dst) {
  ProfileScope profile("conv layout");
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < K; ++k) std::memcpy(dst + (b * K + k) * L, src + (k * B + b) * L, L * sizeof(float));
}

// Fills `col` (CRS, B*PQ) for images [n0, n0+B), or returns x itself when no copy is needed.
const float* columns(const float* x, const ConvGeometry& g, int64_t n0, int64_t B, float* col) {
  const float* xb = x + n0 * g.C * g.H * g.W;
  if (g.is_pointwise()) {
    if (B == 1) return xb;
    to_channel_major(xb, B, g.C, g.pq(), col);
  } else {
    im2col(xb, g, B, col);
  }
  return col;
}

Tensor forward(const Tensor& x, const Tensor& w, const Tensor* bias, const ConvGeometry& g) {
  ProfileScope profile("conv other");
  Tensor y = Tensor::empty({g.N, g.K, g.P, g.Q});
  const int64_t chunk = images_per_chunk(g);
  Tensor col = Tensor::empty({g.crs() * chunk * g.pq()});
  Tensor out = chunk > 1 ? Tensor::empty({g.K * chunk * g.pq()}) : Tensor();
  for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
    const int64_t B = std::min(chunk, g.N - n0), L = B * g.pq();
    const float* cols = columns(x.data(), g, n0, B, col.data());
    float* yb = y.data() + n0 * g.K * g.pq();
    float* dst = B == 1 ? yb : out.data();
    gemm(false, false, g.K, L, g.crs(), 1.0f, w.data(), g.crs(), cols, L, 0.0f, dst, L);
    if (B > 1) from_channel_major(dst, B, g.K, g.pq(), yb);
  }
  if (bias != nullptr || g.relu) {  // the epilogue: bias and ReLU in one pass
    const float* b = bias ? bias->data() : nullptr;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t k = 0; k < g.K; ++k) {
        float* plane = y.data() + (n * g.K + k) * g.pq();
        const float bk = b ? b[k] : 0.0f;
        if (g.relu)
          for (int64_t i = 0; i < g.pq(); ++i) plane[i] = std::max(plane[i] + bk, 0.0f);
        else
          for (int64_t i = 0; i < g.pq(); ++i) plane[i] += bk;
      }
  }
  return y;
}

// Backward of y = conv(x, w) + bias. x is defined when w_slot is set, w when x_slot is set.
//   dW (K, CRS)  += dY (K, N*PQ) * col^T        (col recomputed from x, chunk by chunk)
//   dcol (CRS, N*PQ) = W^T * dY,  dx = col2im(dcol)
//   dbias[k]     += sum over n, p, q of dY
void backward(const Tensor& gy_in, const Tensor& y, const Tensor& x, const Tensor& w, const ConvGeometry& g,
              GradSlot* x_slot, GradSlot* w_slot, GradSlot* b_slot) {
  ProfileScope profile("conv other");
  const Tensor gy = g.relu ? relu_backward(gy_in, y) : gy_in;
  const int64_t chunk = images_per_chunk(g);
  const bool need_cols = w_slot != nullptr;
  Tensor col = need_cols ? Tensor::empty({g.crs() * chunk * g.pq()}) : Tensor();
  Tensor gy_cm = chunk > 1 ? Tensor::empty({g.K * chunk * g.pq()}) : Tensor();
  Tensor dcol = x_slot ? Tensor::empty({g.crs() * chunk * g.pq()}) : Tensor();
  Tensor dw = w_slot ? Tensor::empty({g.K, g.C, g.R, g.S}) : Tensor();
  // col2im adds overlapping windows into dx, so a 3x3 or 7x7 dx starts from zeros.
  Tensor dx = !x_slot            ? Tensor()
              : g.is_pointwise() ? Tensor::empty({g.N, g.C, g.H, g.W})
                                 : Tensor::zeros({g.N, g.C, g.H, g.W});

  for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
    const int64_t B = std::min(chunk, g.N - n0), L = B * g.pq();
    const float* gyb = gy.data() + n0 * g.K * g.pq();
    if (B > 1) {
      to_channel_major(gyb, B, g.K, g.pq(), gy_cm.data());
      gyb = gy_cm.data();
    }
    if (w_slot) {
      const float* cols = columns(x.data(), g, n0, B, col.data());
      gemm(false, true, g.K, g.crs(), L, 1.0f, gyb, L, cols, L, n0 > 0 ? 1.0f : 0.0f, dw.data(), g.crs());
    }
    if (x_slot) {
      float* dxb = dx.data() + n0 * g.C * g.H * g.W;
      if (g.is_pointwise() && B == 1) {
        gemm(true, false, g.C, L, g.K, 1.0f, w.data(), g.crs(), gyb, L, 0.0f, dxb, L);
        continue;
      }
      gemm(true, false, g.crs(), L, g.K, 1.0f, w.data(), g.crs(), gyb, L, 0.0f, dcol.data(), L);
      if (g.is_pointwise())
        from_channel_major(dcol.data(), B, g.C, g.pq(), dxb);
      else
        col2im_add(dcol.data(), g, B, dxb);
    }
  }
  if (w_slot) add_grad(*w_slot, std::move(dw));
  if (x_slot) add_grad(*x_slot, std::move(dx));
  if (b_slot) {
    Tensor db = Tensor::empty({g.K});
    for (int64_t k = 0; k < g.K; ++k) {
      double sum = 0.0;
      for (int64_t n = 0; n < g.N; ++n) {
        const float* plane = gy.data() + (n * g.K + k) * g.pq();
        for (int64_t i = 0; i < g.pq(); ++i) sum += plane[i];
      }
      db.data()[k] = static_cast<float>(sum);
    }
    add_grad(*b_slot, std::move(db));
  }
}

}  // namespace

int64_t images_within_column_budget(int64_t floats_per_image, int64_t N) {
  return std::max<int64_t>(1, std::min(kColumnBudgetFloats / std::max<int64_t>(1, floats_per_image), N));
}

Shape conv2d_output_shape(const Shape& x, const Shape& w, Conv2dParams p) {
  if (x.rank() != 4) fail("conv2d: input must be (N,C,H,W), found shape {}", x.str());
  if (w.rank() != 4) fail("conv2d: weight must be (K,C,R,S), found shape {}", w.str());
  if (x[1] != w[1]) fail("conv2d: input has {} channels but the weight {} expects {}", x[1], w.str(), w[1]);
  if (p.stride < 1 || p.padding < 0) fail("conv2d: invalid stride {} or padding {}", p.stride, p.padding);
  const int64_t P = (x[2] + 2 * p.padding - w[2]) / p.stride + 1;
  const int64_t Q = (x[3] + 2 * p.padding - w[3]) / p.stride + 1;
  if (x[2] + 2 * p.padding < w[2] || x[3] + 2 * p.padding < w[3] || P < 1 || Q < 1)
    fail("conv2d: input {} is smaller than the kernel {} with padding {}", x.str(), w.str(), p.padding);
  return {x[0], w[0], P, Q};
}

Var conv2d(const Var& x, const Var& w, const Var* bias, Conv2dParams params) {
  const ConvGeometry g = geometry(x.shape(), w.shape(), params);
  if (bias) expect_shape(bias->value(), Shape{g.K}, "conv2d bias");
  Tensor y = forward(x.value(), w.value(), bias ? &bias->value() : nullptr, g);
  std::shared_ptr<GradSlot> b_slot = bias ? bias->slot() : nullptr;
  // Save only what backward reads: x for the weight gradient, w for the input gradient.
  Tensor saved_x = w.requires_grad() ? x.value() : Tensor();
  Tensor saved_w = x.requires_grad() ? w.value() : Tensor();
  Tensor saved_y = g.relu ? y : Tensor();  // the ReLU mask
  return record_op(
      std::move(y), {&x, &w, bias},
      [xv = std::move(saved_x), wv = std::move(saved_w), yv = std::move(saved_y), xs = x.slot(), ws = w.slot(), b_slot,
       g](const Tensor& gy) { backward(gy, yv, xv, wv, g, xs.get(), ws.get(), b_slot.get()); });
}

Tensor conv2d_forward_ref(const Tensor& x, const Tensor& w, const Tensor* bias, Conv2dParams params) {
  const ConvGeometry g = geometry(x.shape(), w.shape(), params);
  Tensor y = Tensor::empty({g.N, g.K, g.P, g.Q});
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t k = 0; k < g.K; ++k)
      for (int64_t p = 0; p < g.P; ++p)
        for (int64_t q = 0; q < g.Q; ++q) {
          double sum = bias ? bias->data()[k] : 0.0;
          for (int64_t c = 0; c < g.C; ++c)
            for (int64_t r = 0; r < g.R; ++r)
              for (int64_t s = 0; s < g.S; ++s) {
                const int64_t h = p * g.stride - g.pad + r, wi = q * g.stride - g.pad + s;
                if (h < 0 || h >= g.H || wi < 0 || wi >= g.W) continue;
                sum += static_cast<double>(x.data()[((n * g.C + c) * g.H + h) * g.W + wi]) *
                       w.data()[((k * g.C + c) * g.R + r) * g.S + s];
              }
          y.data()[((n * g.K + k) * g.P + p) * g.Q + q] = static_cast<float>(g.relu ? std::max(sum, 0.0) : sum);
        }
  return y;
}

}  // namespace toptag
