#include "nn/kernels/winograd.h"

#include <algorithm>

#include "nn/check.h"
#include "nn/kernels/tile_driver.h"
#include "nn/parallel.h"
#include "nn/profile.h"

namespace toptag {

namespace {

constexpr int kPoints = 16;        // the 4x4 transformed tile
constexpr int64_t kGemmRows = 96;  // tiles per GEMM work item

struct Tiling {
  int64_t N, H, W, tiles_h, tiles_w;
  int64_t count() const { return N * tiles_h * tiles_w; }
};

// V[p][tile][c] = (B^T d B)[p] for the 4x4 input tile d whose top-left pixel is (2 ty - 1, 2 tx - 1).
void transform_input(const float* x, const Tiling& g, int64_t C, int64_t tile, const float* zeros, float* V) {
  const int64_t T = g.count(), per_image = g.tiles_h * g.tiles_w;
  const int64_t n = tile / per_image, ty = (tile % per_image) / g.tiles_w, tx = tile % g.tiles_w;
  const float* d[kPoints];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      const int64_t h = 2 * ty - 1 + i, w = 2 * tx - 1 + j;
      d[i * 4 + j] = (h >= 0 && h < g.H && w >= 0 && w < g.W) ? x + ((n * g.H + h) * g.W + w) * C : zeros;
    }
  float* v[kPoints];
  for (int p = 0; p < kPoints; ++p) v[p] = V + (p * T + tile) * C;
    // Across channels the 16 inputs and 16 outputs are separate unit-stride streams: one SIMD lane per channel.
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    float t[kPoints];  // B^T d: rows
    for (int j = 0; j < 4; ++j) {
      const float d0 = d[j][c], d1 = d[4 + j][c], d2 = d[8 + j][c], d3 = d[12 + j][c];
      t[j] = d0 - d2;
      t[4 + j] = d1 + d2;
      t[8 + j] = d2 - d1;
      t[12 + j] = d1 - d3;
    }
    for (int i = 0; i < 4; ++i) {  // (B^T d) B: columns
      const float r0 = t[4 * i], r1 = t[4 * i + 1], r2 = t[4 * i + 2], r3 = t[4 * i + 3];
      v[4 * i][c] = r0 - r2;
      v[4 * i + 1][c] = r1 + r2;
      v[4 * i + 2][c] = r2 - r1;
      v[4 * i + 3][c] = r1 - r3;
    }
  }
}

// y's 2x2 block of `tile` = A^T m A (+ bias, + residual, ReLU), m[p] = M[p][tile][k].
void transform_output(const float* M, const Tiling& g, const WinogradConv& cv, int64_t tile, const float* residual,
                      bool relu, float* y) {
  const int64_t T = g.count(), K = cv.K, per_image = g.tiles_h * g.tiles_w;
  const int64_t n = tile / per_image, ty = (tile % per_image) / g.tiles_w, tx = tile % g.tiles_w;
  const float* m[kPoints];
  for (int p = 0; p < kPoints; ++p) m[p] = M + (p * T + tile) * K;
  int64_t at[4];  // where the block's outputs go, -1 past the map's edge
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) {
      const int64_t h = 2 * ty + i, w = 2 * tx + j;
      at[i * 2 + j] = (h < g.H && w < g.W) ? ((n * g.H + h) * g.W + w) * K : -1;
    }
  const float* bias = cv.bias.data();
#pragma omp simd
  for (int64_t k = 0; k < K; ++k) {
    float a[8];  // A^T m: two rows of four
    for (int j = 0; j < 4; ++j) {
      const float m0 = m[j][k], m1 = m[4 + j][k], m2 = m[8 + j][k], m3 = m[12 + j][k];
      a[j] = m0 + m1 + m2;
      a[4 + j] = m1 - m2 - m3;
    }
    const float out[4] = {a[0] + a[1] + a[2], a[1] - a[2] - a[3], a[4] + a[5] + a[6], a[5] - a[6] - a[7]};
    for (int o = 0; o < 4; ++o) {
      if (at[o] < 0) continue;
      float v = out[o] + bias[k];
      if (residual) v += residual[at[o] + k];
      if (relu && v < 0.0f) v = 0.0f;  // NaN stays NaN
      y[at[o] + k] = v;
    }
  }
}

}  // namespace

int64_t toptag_packed_bytes(const WinogradConv& conv) {
  return static_cast<int64_t>(conv.weights.size() * sizeof(float));
}

bool winograd_applies(const PackedConv& conv) {
  return conv.R == 3 && conv.S == 3 && conv.stride == 1 && conv.pad == 1;
}

int64_t winograd_tiles(int64_t N, int64_t P, int64_t Q) {
  return N * ((P + 1) / 2) * ((Q + 1) / 2);
}

WinogradConv pack_winograd(const Tensor& weight, const Tensor* bias, Isa isa) {
  if (weight.rank() != 4 || weight.dim(2) != 3 || weight.dim(3) != 3)
    fail("pack_winograd: weight must be (K, C, 3, 3), found {}", weight.shape().str());
  WinogradConv cv;
  cv.kernels = &kernels(isa);
  cv.K = weight.dim(0), cv.C = weight.dim(1);
  const int64_t nr = cv.kernels->nr;
  cv.panels = (cv.K + nr - 1) / nr;
  cv.weights.assign(static_cast<size_t>(kPoints * cv.point_size()), 0.0f);
  cv.bias.assign(static_cast<size_t>(cv.panels * nr), 0.0f);
  cv.zeros.assign(static_cast<size_t>(cv.C), 0.0f);
  for (int64_t k = 0; k < cv.K; ++k) {
    if (bias) cv.bias[k] = bias->data()[k];
    for (int64_t c = 0; c < cv.C; ++c) {
      const float* g = weight.data() + (k * cv.C + c) * 9;
      double gg[4][3];  // G g
      for (int s = 0; s < 3; ++s) {
        const double g0 = g[s], g1 = g[3 + s], g2 = g[6 + s];
        gg[0][s] = g0;
        gg[1][s] = 0.5 * (g0 + g1 + g2);
        gg[2][s] = 0.5 * (g0 - g1 + g2);
        gg[3][s] = g2;
      }
      for (int i = 0; i < 4; ++i) {  // (G g) G^T
        const double a = gg[i][0], b = gg[i][1], e = gg[i][2];
        const double u[4] = {a, 0.5 * (a + b + e), 0.5 * (a - b + e), e};
        for (int j = 0; j < 4; ++j) {
          const int64_t point = i * 4 + j;
          cv.weights[point * cv.point_size() + (k / nr) * cv.C * nr + c * nr + k % nr] = static_cast<float>(u[j]);
        }
      }
    }
  }
  return cv;
}

WinogradConv pack_winograd(const PackedConv& direct) {
  if (!winograd_applies(direct)) fail("pack_winograd: not a 3x3, stride-1, padding-1 convolution");
  Tensor bias = Tensor::empty({direct.K});
  std::copy_n(direct.bias.begin(), direct.K, bias.data());  // the first K of its padded panels
  return pack_winograd(unpack_conv_weight(direct), &bias, direct.kernels->isa);
}

Tensor conv_winograd(const WinogradConv& cv, const Tensor& x, const Tensor* residual, bool relu) {
  if (x.rank() != 4 || x.dim(3) != cv.C)
    fail("conv_winograd: input must be (N, H, W, {}), found {}", cv.C, x.shape().str());
  const Tiling g{x.dim(0), x.dim(1), x.dim(2), (x.dim(1) + 1) / 2, (x.dim(2) + 1) / 2};
  Tensor y = Tensor::empty({g.N, g.H, g.W, cv.K});
  if (residual) expect_shape(*residual, y.shape(), "conv_winograd residual");
  if (y.numel() == 0) return y;  // an empty batch
  ProfileScope profile("conv winograd");
  const KernelSet& ks = *cv.kernels;
  const int64_t T = g.count(), C = cv.C, K = cv.K;
  Tensor V = Tensor::empty({kPoints * T * C}), M = Tensor::empty({kPoints * T * K});
  const bool parallel = T * K * C * kPoints >= kParallelMinMacs && num_threads() > 1;

#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t tile = 0; tile < T; ++tile) transform_input(x.data(), g, C, tile, cv.zeros.data(), V.data());

  // The 16 GEMMs M[p] (T x K) = V[p] (T x C) U[p] (C x K), cut into items of kGemmRows tiles x one panel.
  const int64_t row_blocks = (T + kGemmRows - 1) / kGemmRows, items = kPoints * cv.panels * row_blocks;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t point = item / (cv.panels * row_blocks), panel = (item / row_blocks) % cv.panels;
    const int64_t m0 = (item % row_blocks) * kGemmRows, m1 = std::min(T, m0 + kGemmRows);
    const int64_t k0 = panel * ks.nr;
    TileArgs t;
    t.taps = 1;
    t.channels = C;
    t.panel = cv.weights.data() + point * cv.point_size() + panel * C * ks.nr;
    t.ld_out = K;
    t.col_count = static_cast<int>(std::min<int64_t>(ks.nr, K - k0));
    const void* rows[32];
    TT_ASSERT(ks.mr <= 32);
    // The weights are one array, point by point and panel by panel: the next item's panel follows
    // this one (after the last of its row blocks).
    const int64_t panel_bytes = C * ks.nr * static_cast<int64_t>(sizeof(float));
    const bool last_rows = m1 == T && item + 1 < items;
    const NextPanel next = last_rows ? NextPanel{static_cast<const char*>(t.panel) + panel_bytes, panel_bytes / 64,
                                                 (m1 - m0 + ks.mr - 1) / ks.mr}
                                     : NextPanel{};
    for (int64_t m = m0; m < m1; m += ks.mr) {
      t.prefetch = next.slice((m - m0) / ks.mr, C);
      t.row_count = static_cast<int>(std::min<int64_t>(ks.mr, m1 - m));
      for (int i = 0; i < t.row_count; ++i) rows[i] = V.data() + (point * T + m + i) * C;
      t.rows = rows;
      t.out = M.data() + (point * T + m) * K + k0;
      ks.tile_f32(t);
    }
  }

#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t tile = 0; tile < T; ++tile)
    transform_output(M.data(), g, cv, tile, residual ? residual->data() : nullptr, relu, y.data());
  return y;
}

}  // namespace toptag
