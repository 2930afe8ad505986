#include "nn/kernels/tiled_gemm.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "nn/kernels/tile.h"
#include "nn/parallel.h"

namespace toptag {

namespace {

// Rows of op(B) packed at a time: one panel of them is kKc x nr floats, 32 KB on AVX-512 (the L1 of
// the CPUs here holds 32-48 KB), read again by each of a block's row tiles.
constexpr int64_t kKc = 256;
// Row tiles per block: 192 rows on AVX-512, whose kKc columns (192 KB) stay in L2 while every panel
// passes them.
constexpr int64_t kMcTiles = 16;
// Below this many multiply-adds a product is left to OpenBLAS: packing and a parallel region would
// cost more than they save.
constexpr int64_t kMinMacs = int64_t{1} << 18;

// Rows [k0, k0 + kc) of op(B), columns [col0, col0 + cols), as one panel: out[k][j], j < nr, zeros
// past `cols`. op(B) is K x N: B itself (ldb >= N), or with trans_b its transpose (B is N x K).
void pack_b_panel(bool trans_b, const float* B, int64_t ldb, int64_t k0, int64_t kc, int64_t col0, int cols, int nr,
                  float* out) {
  if (!trans_b) {
    for (int64_t k = 0; k < kc; ++k) {
      const float* src = B + (k0 + k) * ldb + col0;
      float* dst = out + k * nr;
      std::copy(src, src + cols, dst);
      std::fill(dst + cols, dst + nr, 0.0f);
    }
    return;
  }
  // op(B)'s column col0 + j is B's row: read kTransposeRows of them side by side, so that each step
  // writes that many neighbouring floats of the panel's row k.
  constexpr int kTransposeRows = 8;
  int j = 0;
  for (; j + kTransposeRows <= cols; j += kTransposeRows) {
    const float* src = B + (col0 + j) * ldb + k0;
    for (int64_t k = 0; k < kc; ++k)
      for (int r = 0; r < kTransposeRows; ++r) out[k * nr + j + r] = src[r * ldb + k];
  }
  for (; j < cols; ++j) {
    const float* src = B + (col0 + j) * ldb + k0;
    for (int64_t k = 0; k < kc; ++k) out[k * nr + j] = src[k];
  }
  for (int64_t k = 0; k < kc; ++k) std::fill(out + k * nr + cols, out + (k + 1) * nr, 0.0f);
}

// Scratch that lives with its thread, grown as needed and never shrunk: a training step makes
// hundreds of products, and fresh pages for each would be paid for again every time.
float* scratch(std::vector<float>& buffer, int64_t floats) {
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(floats);
  return buffer.data();
}

// Whether tiles read panel p of op(B) from a packed copy: always for a transposed B (its columns are
// rows of B), and for the last panel where it has fewer than nr columns (the tile reads nr).
bool packs_panel(bool trans_b, int64_t p, int nr, int64_t N) {
  return trans_b || (p + 1) * nr > N;
}

// Where panel p is packed: a transposed B packs every panel, one after the other; otherwise only the
// last is, in the first slot.
int64_t packed_slot(bool trans_b, int64_t p) {
  return trans_b ? p : 0;
}

}  // namespace

namespace kernels_ref {

void tile_gemm(const GemmTileArgs& t) {
  float sums[kMr][kNr] = {};
  for (int64_t k = 0; k < t.depth; ++k)
    for (int i = 0; i < t.row_count; ++i) {
      const float a = t.k_major ? t.a[k * t.lda + i] : t.a[i * t.lda + k];
      for (int j = 0; j < kNr; ++j) sums[i][j] += a * t.b[k * t.ldb + j];
    }
  for (int i = 0; i < t.row_count; ++i)
    for (int j = 0; j < t.col_count; ++j) {
      float& c = t.c[i * t.ldc + j];
      c = t.accumulate ? c + sums[i][j] : sums[i][j];
    }
}

}  // namespace kernels_ref

bool tiled_gemm_takes(int64_t M, int64_t N, int64_t K, float alpha, float beta) {
  return alpha == 1.0f && (beta == 0.0f || beta == 1.0f) && M > 0 && N > 0 && K > 0 && M * N * K >= kMinMacs;
}

void tiled_gemm(Isa isa, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const KernelSet& ks = kernels(isa);
  const int mr = ks.mr, nr = ks.nr;
  // Row blocks of at most kMcTiles tiles, as even as whole tiles allow: the threads share them out.
  const int64_t panels = (N + nr - 1) / nr, row_blocks = (M + kMcTiles * mr - 1) / (kMcTiles * mr);
  const int64_t block_rows = ((M + row_blocks - 1) / row_blocks + mr - 1) / mr * mr, units = row_blocks * panels;
  const bool packs_any = packs_panel(trans_b, panels - 1, nr, N);
  thread_local std::vector<float> b_buffer;
  float* const packed_b = packs_any ? scratch(b_buffer, (trans_b ? panels : 1) * kKc * nr) : nullptr;
  const int threads = omp_in_parallel() ? 1 : static_cast<int>(std::min<int64_t>(num_threads(), units));
#pragma omp parallel num_threads(threads)
  {
    // This thread's share of the (row block, panel) units, row block by row block: a block's rows
    // stay in its core's L2 while the panels pass.
    const int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
    const int64_t u0 = units * t / n, u1 = units * (t + 1) / n;
    // A transposed A's block of rows, kKc rows of k of it, copied (tiled_gemm.h).
    thread_local std::vector<float> a_buffer;
    float* const packed_a = trans_a ? scratch(a_buffer, kKc * block_rows) : nullptr;
    for (int64_t k0 = 0; k0 < K; k0 += kKc) {
      const int64_t kc = std::min(kKc, K - k0);
      if (packs_any) {
#pragma omp for schedule(static)
        for (int64_t p = 0; p < panels; ++p)
          if (packs_panel(trans_b, p, nr, N))
            pack_b_panel(trans_b, B, ldb, k0, kc, p * nr, static_cast<int>(std::min<int64_t>(nr, N - p * nr)), nr,
                         packed_b + packed_slot(trans_b, p) * kKc * nr);
        // (the loop's barrier: every panel is packed before any tile reads one)
      }
      int64_t packed_block = -1;
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t block = u / panels, p = u % panels;
        const int64_t r0 = block * block_rows, r1 = std::min(M, r0 + block_rows);
        if (trans_a && block != packed_block) {
          for (int64_t k = 0; k < kc; ++k) {
            const float* src = A + (k0 + k) * lda + r0;
            std::copy(src, src + (r1 - r0), packed_a + k * block_rows);
          }
          packed_block = block;
        }
        GemmTileArgs tile{};
        tile.lda = trans_a ? block_rows : lda;
        tile.k_major = trans_a;
        tile.depth = kc;
        if (packs_panel(trans_b, p, nr, N)) {
          tile.b = packed_b + packed_slot(trans_b, p) * kKc * nr;
          tile.ldb = nr;
        } else {
          tile.b = B + k0 * ldb + p * nr;
          tile.ldb = ldb;
        }
        tile.ldc = ldc;
        tile.col_count = static_cast<int>(std::min<int64_t>(nr, N - p * nr));
        // Every block of k after the first adds to what the ones before it left in C; so does the
        // first with beta 1.
        tile.accumulate = k0 > 0 || beta != 0.0f;
        for (int64_t i0 = r0; i0 < r1; i0 += mr) {
          tile.a = trans_a ? packed_a + (i0 - r0) : A + i0 * lda + k0;
          tile.row_count = static_cast<int>(std::min<int64_t>(mr, r1 - i0));
          tile.c = C + i0 * ldc + p * nr;
          ks.tile_gemm(tile);
        }
      }
      if (packs_any) {
#pragma omp barrier
      }
    }
  }
}

}  // namespace toptag
