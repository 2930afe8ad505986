// The AVX-512 kernels: tile_simd.inc with 16-float vectors, 12 x 32 tiles. Compiled with
// -mavx512f -mavx512bw -mavx512dq -mavx512vl (nn/CMakeLists.txt); only called on CPUs that have them.
#include <immintrin.h>  // intrinsics only: always inlined

#include "nn/kernels/tile.h"

namespace toptag::kernels_avx512 {

#define TOPTAG_VEC_FLOATS 16
#define TOPTAG_TILE_MR 12
typedef float vec16 __attribute__((vector_size(64)));
// The masked forms: the plain ones trip GCC 12's -Wmaybe-uninitialized inside the intrinsics.
inline vec16 vector_sqrt(vec16 x) {
  return reinterpret_cast<vec16>(_mm512_maskz_sqrt_ps(0xffff, reinterpret_cast<__m512>(x)));
}
inline vec16 reciprocal_estimate(vec16 d) {  // relative error below 2^-14
  return reinterpret_cast<vec16>(_mm512_maskz_rcp14_ps(0xffff, reinterpret_cast<__m512>(d)));
}
#include "nn/kernels/tile_simd.inc"

// Block floating point: the VNNI tile where the CPU has it (nn/kernels/packed_conv.cpp kernels()), else
// AVX2's tile over this set's 32-wide panels.
const KernelSet set{Isa::avx512,
                    "avx512 f32 12x32",
                    kMr,
                    kNr,
                    tile_f32,
                    "avx2 u8*s8 6x16 on 32-wide panels",
                    kernels_avx2::kBfpRows,
                    kernels_avx2::tile_bfp_nr32,
                    true,
                    kernels_avx2::bfp_block_max,
                    kernels_avx2::bfp_block_bytes,
                    /*bfp_tap_index=*/false,
                    /*int8_signed_bytes=*/true,
                    /*tile_int8_words=*/kernels_avx2::tile_bfp_nr32,
                    kernels_avx2::int8_bytes,
                    kernels_avx2::int8_words,
                    tile_gemm,
                    winograd_input,
                    winograd_output,
                    adam};

}  // namespace toptag::kernels_avx512
