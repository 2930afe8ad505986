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
constexpr int64_t kFusedBlockBytes = 384 * 1024;
constexpr int64_t kFusedMaxWeightBytes = 1024 * 1024;

struct Tiling {
  int64_t N, H, W, tiles_h, tiles_w;
  int64_t count() const { return N * tiles_h * tiles_w; }
};

// V[p][slot][c] = (B^T d B)[p] for the 4x4 input tile d of `tile` (top-left pixel (2 ty - 1, 2 tx - 1)),
// the points `points` slots apart.
void transform_input(const WinogradConv& cv, const float* x, const Tiling& g, int64_t tile, float* V, int64_t points,
                     int64_t slot) {
  const int64_t C = cv.C, per_image = g.tiles_h * g.tiles_w;
  const int64_t n = tile / per_image, ty = (tile % per_image) / g.tiles_w, tx = tile % g.tiles_w;
  const float* d[kPoints];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      const int64_t h = 2 * ty - 1 + i, w = 2 * tx - 1 + j;
      d[i * 4 + j] = (h >= 0 && h < g.H && w >= 0 && w < g.W) ? x + ((n * g.H + h) * g.W + w) * C : cv.zeros.data();
    }
  float* v[kPoints];
  for (int p = 0; p < kPoints; ++p) v[p] = V + (p * points + slot) * C;
  cv.kernels->winograd_input(d, v, C);
}

// y's 2x2 block of `tile` = A^T m A (+ bias, + residual, ReLU), m[p] = M[p][slot][k], the points
// `points` slots apart.
void transform_output(const WinogradConv& cv, const float* M, int64_t points, int64_t slot, const Tiling& g,
                      int64_t tile, const float* residual, bool relu, float* y) {
  const int64_t K = cv.K, per_image = g.tiles_h * g.tiles_w;
  const int64_t n = tile / per_image, ty = (tile % per_image) / g.tiles_w, tx = tile % g.tiles_w;
  const float* m[kPoints];
  for (int p = 0; p < kPoints; ++p) m[p] = M + (p * points + slot) * K;
  float* out[4];  // where the block's outputs go, null past the map's edge
  const float* r[4] = {};
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) {
      const int64_t h = 2 * ty + i, w = 2 * tx + j, at = ((n * g.H + h) * g.W + w) * K;
      const bool inside = h < g.H && w < g.W;
      out[i * 2 + j] = inside ? y + at : nullptr;
      if (residual) r[i * 2 + j] = inside ? residual + at : nullptr;
    }
  cv.kernels->winograd_output(m, out, residual ? r : nullptr, cv.bias.data(), relu, K);
}

// Rows [m0, m1) of point `point`'s GEMM, one panel: M[point][m][k0..] = V[point][m][.] U[point][.][k0..],
// the points `points` rows apart in V and M.
void multiply_point(const WinogradConv& cv, const float* V, float* M, int64_t points, int64_t point, int64_t panel,
                    int64_t m0, int64_t m1, const NextPanel& next) {
  const KernelSet& ks = *cv.kernels;
  const int64_t k0 = panel * ks.nr;
  TileArgs t;
  t.taps = 1;
  t.channels = cv.C;
  t.panel = cv.weights.data() + point * cv.point_size() + panel * cv.C * ks.nr;
  t.ld_out = cv.K;
  t.col_count = static_cast<int>(std::min<int64_t>(ks.nr, cv.K - k0));
  const void* rows[32];
  TT_ASSERT(ks.mr <= 32);
  for (int64_t m = m0; m < m1; m += ks.mr) {
    t.prefetch = next.slice((m - m0) / ks.mr, cv.C);
    t.row_count = static_cast<int>(std::min<int64_t>(ks.mr, m1 - m));
    for (int i = 0; i < t.row_count; ++i) rows[i] = V + (point * points + m + i) * cv.C;
    t.rows = rows;
    t.out = M + (point * points + m) * cv.K + k0;
    ks.tile_f32(t);
  }
}

// Tiles per block of the fused form, or 0 for layer by layer. Fused where the transformed weights
// (16 C K floats) stay in a core's cache over the blocks: otherwise every block would read them from
// memory again. A block's points (16 x tiles x (C + K) floats) fit in about kFusedBlockBytes, and
// the blocks share out evenly between the threads (a block's last tile of rows may be partial).
int64_t fused_block_tiles(const WinogradConv& cv, int64_t T, int threads) {
  const int64_t mr = cv.kernels->mr;
  const int64_t weight_bytes = kPoints * cv.C * cv.K * static_cast<int64_t>(sizeof(float));
  if (weight_bytes > kFusedMaxWeightBytes) return 0;
  const int64_t per_tile = kPoints * (cv.C + cv.K) * static_cast<int64_t>(sizeof(float));
  const int64_t most = std::max<int64_t>(mr, kFusedBlockBytes / per_tile / mr * mr);
  int64_t blocks = (T + most - 1) / most;
  blocks = (blocks + threads - 1) / threads * threads;
  return blocks <= T ? (T + blocks - 1) / blocks : 0;
}

}  // namespace

namespace kernels_ref {
#include "nn/kernels/winograd_transforms.inc"
}  // namespace kernels_ref

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

namespace {

// The fused form: each block of `block` tiles is transformed, multiplied and transformed back while
// its 16 points stay in the thread's cache; the weights, small enough to stay there too, serve every
// block.
void winograd_fused(const WinogradConv& cv, const float* x, const Tiling& g, int64_t block, const float* r, bool relu,
                    bool parallel, float* y) {
  const int64_t T = g.count(), blocks = (T + block - 1) / block;
#pragma omp parallel if (parallel)
  {
    Tensor V = Tensor::empty({kPoints * block * cv.C}), M = Tensor::empty({kPoints * block * cv.K});
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t t0 = b * block, count = std::min(block, T - t0);
      for (int64_t i = 0; i < count; ++i) transform_input(cv, x, g, t0 + i, V.data(), block, i);
      for (int64_t point = 0; point < kPoints; ++point)
        for (int64_t panel = 0; panel < cv.panels; ++panel)
          multiply_point(cv, V.data(), M.data(), block, point, panel, 0, count, NextPanel{});
      for (int64_t i = 0; i < count; ++i) transform_output(cv, M.data(), block, i, g, t0 + i, r, relu, y);
    }
  }
}

// Layer by layer: every tile's transform, then the 16 GEMMs M[p] (T x K) = V[p] (T x C) U[p] (C x K)
// in items of kGemmRows tiles x one panel, then every tile's output.
void winograd_layer_by_layer(const WinogradConv& cv, const float* x, const Tiling& g, const float* r, bool relu,
                             bool parallel, float* y) {
  const int64_t T = g.count();
  Tensor V = Tensor::empty({kPoints * T * cv.C}), M = Tensor::empty({kPoints * T * cv.K});
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t tile = 0; tile < T; ++tile) transform_input(cv, x, g, tile, V.data(), T, tile);

  const int64_t row_blocks = (T + kGemmRows - 1) / kGemmRows, items = kPoints * cv.panels * row_blocks;
  const int64_t panel_bytes = cv.C * cv.kernels->nr * static_cast<int64_t>(sizeof(float));
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t point = item / (cv.panels * row_blocks), panel = (item / row_blocks) % cv.panels;
    const int64_t m0 = (item % row_blocks) * kGemmRows, m1 = std::min(T, m0 + kGemmRows);
    // The weights are one array, point by point and panel by panel: the next item's panel follows
    // this one (after the last of its row blocks).
    const char* here = reinterpret_cast<const char*>(cv.weights.data() + point * cv.point_size()) + panel * panel_bytes;
    const bool last_rows = m1 == T && item + 1 < items;
    const NextPanel next =
        last_rows ? NextPanel{here + panel_bytes, panel_bytes / 64, (m1 - m0 + cv.kernels->mr - 1) / cv.kernels->mr}
                  : NextPanel{};
    multiply_point(cv, V.data(), M.data(), T, point, panel, m0, m1, next);
  }

#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t tile = 0; tile < T; ++tile) transform_output(cv, M.data(), T, tile, g, tile, r, relu, y);
}

}  // namespace

Tensor conv_winograd(const WinogradConv& cv, const Tensor& x, const Tensor* residual, bool relu, Output to) {
  if (x.rank() != 4 || x.dim(3) != cv.C)
    fail("conv_winograd: input must be (N, H, W, {}), found {}", cv.C, x.shape().str());
  const Tiling g{x.dim(0), x.dim(1), x.dim(2), (x.dim(1) + 1) / 2, (x.dim(2) + 1) / 2};
  Tensor y = output_tensor({g.N, g.H, g.W, cv.K}, x, residual, to, "conv_winograd");
  if (y.numel() == 0) return y;  // an empty batch
  ProfileScope profile("conv winograd");
  const int64_t T = g.count();
  const bool parallel = T * cv.K * cv.C * kPoints >= kParallelMinMacs && num_threads() > 1;
  const float* r = residual ? residual->data() : nullptr;
  const int64_t block = fused_block_tiles(cv, T, parallel ? num_threads() : 1);
  if (block > 0)
    winograd_fused(cv, x.data(), g, block, r, relu, parallel, y.data());
  else
    winograd_layer_by_layer(cv, x.data(), g, r, relu, parallel, y.data());
  return y;
}

}  // namespace toptag
