// The AVX2 + FMA kernels: tile_simd.inc with 8-float vectors, 6 x 16 tiles. Compiled with
// -mavx2 -mfma (nn/CMakeLists.txt); only called on CPUs that have both (nn/kernels/isa.h).
#include "nn/kernels/tile.h"

namespace toptag::kernels_avx2 {

#define TOPTAG_VEC_FLOATS 8
#define TOPTAG_TILE_MR 6
#include "nn/kernels/tile_simd.inc"

const KernelSet set{Isa::avx2, "avx2 f32 6x16", kMr, kNr, tile_f32};

}  // namespace toptag::kernels_avx2
