// The AVX-512 kernels: tile_simd.inc with 16-float vectors, 12 x 32 tiles. Compiled with
// -mavx512f -mavx512bw -mavx512dq -mavx512vl (nn/CMakeLists.txt); only called on CPUs that have them.
#include "nn/kernels/tile.h"

namespace toptag::kernels_avx512 {

#define TOPTAG_VEC_FLOATS 16
#define TOPTAG_TILE_MR 12
#include "nn/kernels/tile_simd.inc"

const KernelSet set{Isa::avx512, "avx512 f32 12x32", kMr, kNr, tile_f32};

}  // namespace toptag::kernels_avx512
