#include "nn/ops/conv2d_nhwc.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "nn/check.h"
#include "nn/gemm.h"
#include "nn/kernels/isa.h"
#include "nn/kernels/packed_conv.h"
#include "nn/ops/channel_sums.h"
#include "nn/ops/elementwise.h"
#include "nn/ops/layout.h"
#include "nn/profile.h"

namespace toptag {

namespace {

// set_conv2d_nhwc_isa's choice, or -1: none.
std::atomic<int> chosen_isa{-1};

// Shape letters as in conv2d.h; a "row" is one output pixel (n, p, q), a column row holds its
// window's R*S*C inputs in (r, s, c) order.
struct Geometry {
  int64_t N, H, W, C, K, R, S, P, Q;
  int stride, pad;
  bool relu;
  int64_t rows() const { return N * P * Q; }
  int64_t depth() const { return R * S * C; }
  int64_t image() const { return H * W * C; }
  bool is_pointwise() const { return R == 1 && S == 1 && stride == 1 && pad == 0; }
};

Geometry geometry(const Shape& x, const Shape& w, Conv2dParams p) {
  if (x.rank() != 4) fail("conv2d_nhwc: input must be (N,H,W,C), found shape {}", x.str());
  // conv2d_output_shape checks the weight, the channels and the sizes on the NCHW view of x; its
  // message is restated with the shape as the caller knows it.
  Shape y;
  try {
    y = conv2d_output_shape({x[0], x[3], x[1], x[2]}, w, p);
  } catch (const Error& e) {
    fail("conv2d_nhwc on input {} (N,H,W,C): {}", x.str(), e.what());
  }
  return {x[0], x[1], x[2], x[3], w[0], w[2], w[3], y[2], y[3], p.stride, p.padding, p.relu};
}

// Whether the convolution runs on toptag's direct kernel (nn/kernels/packed_conv.h: an indirect GEMM
// over weights packed for it) instead of im2col and a GEMM: every one but a stride-1 1x1 (a plain
// GEMM), forward, and for the input gradient of a stride-1 one, which is a convolution too. The direct
// kernel skips the taps that fall in the padding, which im2col multiplies as zeros: 56% of the products
// on the 2x2 maps of ResNet-50's layer4 at 40x40, 40% on layer3's 3x3. The weights are packed on every call (they
// change every step), from the (K, C, R, S) parameter. The reference kernel set keeps im2col, so that
// TOPTAG_ISA=ref (or a test, set_conv2d_nhwc_isa) runs that path. Training at 40x40, batch 64, went
// from 180 to 197 images/s on AVX-512 and from 141 to 153 on AVX2 (bench_resnet, Intel Xeon).
bool runs_direct(const Geometry& g) {
  return !g.is_pointwise() && conv2d_nhwc_isa() != Isa::ref;
}

// Whether dX runs on the direct kernel too: where it is a convolution of dY (packed_conv.h). Others
// (1x3, a padded 1x1, a strided one) take im2col's.
bool direct_input_gradient(const Geometry& g) {
  return runs_direct(g) && input_gradient_is_convolution(g.R, g.S, {g.stride, g.pad});
}

int64_t images_per_chunk(const Geometry& g) {
  return images_within_column_budget(g.P * g.Q * g.depth(), g.N);
}

// (K, C, R, S) -> (K, R, S, C): the weight in a column row's order. A 1x1 weight is the same matrix.
Tensor weight_rsc(const Tensor& w, const Geometry& g) {
  if (g.R * g.S == 1) return w;
  ProfileScope profile("conv weight layout");
  Tensor out = Tensor::empty({g.K, g.depth()});
  transpose_matrices(w.data(), g.K, g.C, g.R * g.S, out.data());
  return out;
}

// (K, R, S, C) -> (K, C, R, S): a gradient back in the parameter's layout. Taken by value: a 1x1
// gradient is the same buffer, reshaped, and add_grad adopts it only if nobody else holds it.
Tensor weight_kcrs(Tensor wt, const Geometry& g) {
  if (g.R * g.S == 1) return wt.reshape({g.K, g.C, g.R, g.S});
  ProfileScope profile("conv weight layout");
  Tensor out = Tensor::empty({g.K, g.C, g.R, g.S});
  transpose_matrices(wt.data(), g.K, g.R * g.S, g.C, out.data());
  return out;
}

// col[(b,p,q), (r,s,c)] = x[n0 + b, p*stride - pad + r, q*stride - pad + s, c], 0 outside the image.
// A one-channel input (the stem's) is copied a float at a time: a memcpy call per float costs more.
void im2col(const float* x, const Geometry& g, int64_t n0, int64_t B, float* col) {
  ProfileScope profile("conv im2col");
  const int64_t C = g.C;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < g.P; ++p) {
      const float* image = x + (n0 + b) * g.image();
      for (int64_t q = 0; q < g.Q; ++q) {
        float* out = col + ((b * g.P + p) * g.Q + q) * g.depth();
        for (int64_t r = 0; r < g.R; ++r) {
          const int64_t h = p * g.stride - g.pad + r;
          for (int64_t s = 0; s < g.S; ++s, out += C) {
            const int64_t w = q * g.stride - g.pad + s;
            const bool inside = h >= 0 && h < g.H && w >= 0 && w < g.W;
            const float* in = inside ? image + (h * g.W + w) * C : nullptr;
            if (C == 1)
              *out = inside ? *in : 0.0f;
            else if (inside)
              std::memcpy(out, in, C * sizeof(float));
            else
              std::memset(out, 0, C * sizeof(float));
          }
        }
      }
    }
}

// The adjoint of im2col: dx[n0 + b, h, w, :] += every column piece read from it. Each thread owns
// whole input rows (b, h), so no two write the same value.
void col2im_add(const float* dcol, const Geometry& g, int64_t n0, int64_t B, float* dx) {
  ProfileScope profile("conv col2im");
  const int64_t C = g.C;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < g.H; ++h)
      for (int64_t r = 0; r < g.R; ++r) {
        const int64_t p_stride = h + g.pad - r;  // = p * stride for the output row p that read row h at tap r
        if (p_stride < 0 || p_stride % g.stride != 0 || p_stride / g.stride >= g.P) continue;
        const int64_t p = p_stride / g.stride;
        for (int64_t q = 0; q < g.Q; ++q)
          for (int64_t s = 0; s < g.S; ++s) {
            const int64_t w = q * g.stride - g.pad + s;
            if (w < 0 || w >= g.W) continue;
            const float* src = dcol + ((b * g.P + p) * g.Q + q) * g.depth() + (r * g.S + s) * C;
            float* dst = dx + (n0 + b) * g.image() + (h * g.W + w) * C;
            for (int64_t c = 0; c < C; ++c) dst[c] += src[c];
          }
      }
}

// y = conv(x, w) (+ bias) (ReLU), with the (K, C, R, S) weight w.
Tensor forward(const Tensor& x, const Tensor& w, const Tensor* bias, const Geometry& g) {
  if (runs_direct(g)) {
    count_gemm_flops(2 * g.rows() * g.K * g.depth());
    const PackedConv packed = [&] {
      ProfileScope profile("conv weight layout");
      return pack_conv(w, bias, {g.stride, g.pad}, conv2d_nhwc_isa());
    }();
    return conv_nhwc(packed, x, nullptr, g.relu);
  }
  // y = x * wt^T: rows of y are pixels, columns output channels.
  const Tensor wt = weight_rsc(w, g);
  Tensor y = Tensor::empty({g.N, g.P, g.Q, g.K});
  if (g.is_pointwise()) {
    gemm(false, true, g.rows(), g.K, g.C, 1.0f, x.data(), g.C, wt.data(), g.C, 0.0f, y.data(), g.K);
  } else {
    const int64_t chunk = images_per_chunk(g);
    Tensor col = Tensor::empty({chunk * g.P * g.Q * g.depth()});
    for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
      const int64_t B = std::min(chunk, g.N - n0), rows = B * g.P * g.Q;
      im2col(x.data(), g, n0, B, col.data());
      gemm(false, true, rows, g.K, g.depth(), 1.0f, col.data(), g.depth(), wt.data(), g.depth(), 0.0f,
           y.data() + n0 * g.P * g.Q * g.K, g.K);
    }
  }
  if (bias != nullptr || g.relu) {  // the epilogue: bias and ReLU in one pass along the channels
    ProfileScope profile("conv epilogue");
    const float* b = bias ? bias->data() : nullptr;
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < g.rows(); ++row) {
      float* out = y.data() + row * g.K;
      for (int64_t k = 0; k < g.K; ++k) {
        const float v = out[k] + (b ? b[k] : 0.0f);
        out[k] = g.relu ? std::max(v, 0.0f) : v;
      }
    }
  }
  return y;
}

// dX of a stride-1 convolution on the direct kernel: the convolution of dY by the flipped weights,
// added in place to the part of the gradient already there (a residual's) when it may be.
void input_gradient_direct(const Tensor& gy, const Tensor& w, const Geometry& g, GradSlot& x_slot) {
  count_gemm_flops(2 * g.rows() * g.K * g.depth());
  const PackedConv packed = [&] {
    ProfileScope profile("conv weight layout");
    return pack_conv_input_gradient(w, {g.stride, g.pad}, conv2d_nhwc_isa());
  }();
  if (Tensor* sum = grad_to_add_into(x_slot, {g.N, g.H, g.W, g.C}))
    conv_nhwc(packed, gy, sum, false, Output::over_residual);
  else
    add_grad(x_slot, conv_nhwc(packed, gy, nullptr, false));
}

// The im2col part of backward (below): dW, and dX through dcol and col2im when x_slot is given.
void backward_columns(const Tensor& gy, const Tensor& x, const Tensor& w, const Geometry& g, GradSlot* x_slot,
                      GradSlot* w_slot) {
  const Tensor wt = x_slot ? weight_rsc(w, g) : Tensor();
  const int64_t chunk = images_per_chunk(g);
  Tensor col = Tensor::empty({chunk * g.P * g.Q * g.depth()});  // columns for dW, then dcol for dX
  // (zeros for an empty batch, which no GEMM below writes)
  Tensor dwt = w_slot ? (g.N > 0 ? Tensor::empty({g.K, g.depth()}) : Tensor::zeros({g.K, g.depth()})) : Tensor();
  // col2im adds overlapping windows: into zeros, or into the part of the gradient already there.
  Tensor* sum = x_slot ? grad_to_add_into(*x_slot, {g.N, g.H, g.W, g.C}) : nullptr;
  Tensor dx = x_slot && !sum ? Tensor::zeros({g.N, g.H, g.W, g.C}) : Tensor();
  float* const dx_data = sum ? sum->data() : dx.data();
  for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
    const int64_t B = std::min(chunk, g.N - n0), rows = B * g.P * g.Q;
    const float* gyb = gy.data() + n0 * g.P * g.Q * g.K;
    if (w_slot) {
      im2col(x.data(), g, n0, B, col.data());
      gemm(true, false, g.K, g.depth(), rows, 1.0f, gyb, g.K, col.data(), g.depth(), n0 > 0 ? 1.0f : 0.0f, dwt.data(),
           g.depth());
    }
    if (x_slot) {
      gemm(false, false, rows, g.depth(), g.K, 1.0f, gyb, g.K, wt.data(), g.depth(), 0.0f, col.data(), g.depth());
      col2im_add(col.data(), g, n0, B, dx_data);
    }
  }
  if (w_slot) {
    Tensor dw = weight_kcrs(std::move(dwt), g);  // its own statement: the argument is gone before add_grad
    add_grad(*w_slot, std::move(dw));
  }
  if (x_slot && !sum) add_grad(*x_slot, std::move(dx));
}

// Backward of y = conv(x, w) + bias, with the (K, C, R, S) weight w, dY (rows, K) and wt = weight_rsc(w):
//   dW (K, RSC) += dY^T * col        (col gathered again from x, chunk by chunk)
//   dcol (rows, RSC) = dY * wt,  dx = col2im(dcol)          (1x1 stride 1: dx = dY * wt directly)
//   dbias[k] += sum over rows of dY[:, k]
// dX is the direct kernel's instead where direct_input_gradient().
void backward(const Tensor& gy_in, const Tensor& y, const Tensor& x, const Tensor& w, const Geometry& g,
              GradSlot* x_slot, GradSlot* w_slot, GradSlot* b_slot) {
  const Tensor gy = g.relu ? relu_backward(gy_in, y) : gy_in;
  if (g.is_pointwise()) {
    const Tensor& wt = w;  // (K, C, 1, 1) is the (K, C) matrix
    if (w_slot) {
      Tensor dw = Tensor::empty({g.K, g.C, 1, 1});
      gemm(true, false, g.K, g.C, g.rows(), 1.0f, gy.data(), g.K, x.data(), g.C, 0.0f, dw.data(), g.C);
      add_grad(*w_slot, std::move(dw));
    }
    if (x_slot) {
      // Into a new tensor, or added (beta 1) to the part of the gradient already there (a residual's).
      Tensor* sum = grad_to_add_into(*x_slot, {g.N, g.H, g.W, g.C});
      Tensor dx = sum ? Tensor() : Tensor::empty({g.N, g.H, g.W, g.C});
      gemm(false, false, g.rows(), g.C, g.K, 1.0f, gy.data(), g.K, wt.data(), g.C, sum ? 1.0f : 0.0f,
           sum ? sum->data() : dx.data(), g.C);
      if (!sum) add_grad(*x_slot, std::move(dx));
    }
  } else {
    if (x_slot && direct_input_gradient(g)) {
      input_gradient_direct(gy, w, g, *x_slot);
      x_slot = nullptr;  // done
    }
    if (w_slot || x_slot) backward_columns(gy, x, w, g, x_slot, w_slot);
  }
  if (b_slot) {
    const std::vector<double> sums =
        channel_sums(g.rows(), g.K, 1, [dy = gy.data(), K = g.K](int64_t begin, int64_t end, float* acc) {
          float* __restrict sum = acc;
          for (int64_t row = begin; row < end; ++row) {
            const float* __restrict in = dy + row * K;
            for (int64_t k = 0; k < K; ++k) sum[k] += in[k];
          }
        });
    Tensor db = Tensor::empty({g.K});
    for (int64_t k = 0; k < g.K; ++k) db.data()[k] = static_cast<float>(sums[static_cast<size_t>(k)]);
    add_grad(*b_slot, std::move(db));
  }
}

}  // namespace

Isa conv2d_nhwc_isa() {
  const int chosen = chosen_isa.load(std::memory_order_relaxed);
  return chosen < 0 ? active_isa() : static_cast<Isa>(chosen);
}

void set_conv2d_nhwc_isa(Isa isa) {
  if (!cpu_supports(isa)) fail("set_conv2d_nhwc_isa: this CPU cannot run {}", isa_name(isa));
  chosen_isa.store(static_cast<int>(isa), std::memory_order_relaxed);
}

Var conv2d_nhwc(const Var& x, const Var& w, const Var* bias, Conv2dParams params) {
  ProfileScope profile("conv other");
  const Geometry g = geometry(x.shape(), w.shape(), params);
  if (bias) expect_shape(bias->value(), Shape{g.K}, "conv2d bias");
  Tensor y = forward(x.value(), w.value(), bias ? &bias->value() : nullptr, g);
  std::shared_ptr<GradSlot> b_slot = bias ? bias->slot() : nullptr;
  // Save only what backward reads: x for the weight gradient, the weight for the input gradient (the
  // parameter's own buffer: a reference, not a copy; the optimizer steps after backward).
  Tensor saved_x = w.requires_grad() ? x.value() : Tensor();
  Tensor saved_w = x.requires_grad() ? w.value() : Tensor();
  Tensor saved_y = g.relu ? y : Tensor();  // the ReLU mask
  return record_op(std::move(y), {&x, &w, bias},
                   [xv = std::move(saved_x), wv = std::move(saved_w), yv = std::move(saved_y), xs = x.slot(),
                    ws = w.slot(), b_slot, g](const Tensor& gy) {
                     ProfileScope profile("conv other");
                     backward(gy, yv, xv, wv, g, xs.get(), ws.get(), b_slot.get());
                   });
}

}  // namespace toptag
