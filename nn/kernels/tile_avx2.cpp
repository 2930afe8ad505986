// The AVX2 + FMA kernels: tile_simd.inc with 8-float vectors, 6 x 16 tiles, and the block floating
// point tile of the same shape. Compiled with -mavx2 -mfma (nn/CMakeLists.txt); only called on CPUs
// that have both (nn/kernels/isa.h).
#include <immintrin.h>  // intrinsics only: always inlined, or static (mm_malloc.h)

#include "nn/kernels/tile.h"

namespace toptag::kernels_avx2 {

#define TOPTAG_VEC_FLOATS 8
#define TOPTAG_TILE_MR 6
#include "nn/kernels/tile_bfp_avx2.inc"
#include "nn/kernels/tile_simd.inc"

void tile_bfp(const BfpTileArgs& t) {
  bfp_avx2::slice(t, kNr, 0);
}

// A 32-wide panel (the AVX-512 set's) as two 16-wide slices.
void tile_bfp_nr32(const BfpTileArgs& t) {
  constexpr int kPanel = 32;
  for (int col0 = 0; col0 < t.col_count; col0 += bfp_avx2::kCols) {
    BfpTileArgs s = t;
    s.col_count = t.col_count - col0 < bfp_avx2::kCols ? t.col_count - col0 : bfp_avx2::kCols;
    s.out = t.out + col0;
    if (t.stage.scale) s.stage.scale = t.stage.scale + col0;
    if (t.stage.bias) s.stage.bias = t.stage.bias + col0;
    if (t.stage.residual) s.stage.residual = t.stage.residual + col0;
    bfp_avx2::slice(s, kPanel, col0);
  }
}

const KernelSet set{Isa::avx2,         "avx2 f32 6x16", kMr,      kNr,  tile_f32,
                    "avx2 u8*s8 4x16", bfp_avx2::kRows, tile_bfp, false};

}  // namespace toptag::kernels_avx2
