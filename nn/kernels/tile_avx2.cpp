// The AVX2 + FMA kernels: tile_simd.inc with 8-float vectors, 6 x 16 tiles, and the block floating
// point tile of the same shape. Compiled with -mavx2 -mfma (nn/CMakeLists.txt); only called on CPUs
// that have both (nn/kernels/isa.h).
#include <immintrin.h>  // intrinsics only: always inlined, or static (mm_malloc.h)

#include "nn/kernels/tile.h"

namespace toptag::kernels_avx2 {

#define TOPTAG_VEC_FLOATS 8
#define TOPTAG_TILE_MR 6
#include "nn/kernels/tile_bfp_avx2.inc"
typedef float vec8 __attribute__((vector_size(32)));
inline vec8 vector_sqrt(vec8 x) {
  return reinterpret_cast<vec8>(_mm256_sqrt_ps(reinterpret_cast<__m256>(x)));
}
inline vec8 reciprocal_estimate(vec8 d) {  // relative error at most 1.5 * 2^-12
  return reinterpret_cast<vec8>(_mm256_rcp_ps(reinterpret_cast<__m256>(d)));
}
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

// The block floating point activation quantizer's loops (tile.h KernelSet), 32 values at a time; the
// rest of a block on the reference loops.
float bfp_block_max(const float* x, int64_t n) {
  // MAXPS(x, m) gives its second operand when either is NaN: NaNs are skipped.
  __m256 m0 = _mm256_setzero_ps(), m1 = m0, m2 = m0, m3 = m0;
  int64_t c = 0;
  for (; c + 32 <= n; c += 32) {
    m0 = _mm256_max_ps(_mm256_loadu_ps(x + c), m0);
    m1 = _mm256_max_ps(_mm256_loadu_ps(x + c + 8), m1);
    m2 = _mm256_max_ps(_mm256_loadu_ps(x + c + 16), m2);
    m3 = _mm256_max_ps(_mm256_loadu_ps(x + c + 24), m3);
  }
  const __m256 m = _mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
  const float rest = c < n ? kernels_ref::bfp_block_max(x + c, n - c) : 0.0f;
  const float vec = _mm_cvtss_f32(h);
  return vec > rest ? vec : rest;
}

int bfp_block_bytes(const float* x, int64_t n, float inverse, float top, uint8_t* m) {
  const __m256 inv = _mm256_set1_ps(inverse), upper = _mm256_set1_ps(top), zero = _mm256_setzero_ps();
  // PACKSSDW and PACKUSWB work within 128-bit lanes: of four vectors a, b, c, d the bytes come out as
  // the 4-byte groups a.lo b.lo c.lo d.lo a.hi b.hi c.hi d.hi, and one VPERMD puts them in order.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256 nans = zero, negatives = zero;
  auto convert = [&](__m256 v) {
    nans = _mm256_or_ps(nans, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    negatives = _mm256_or_ps(negatives, _mm256_cmp_ps(v, zero, _CMP_LT_OQ));
    // MINPS gives its second operand for a NaN: the top. VCVTPS2DQ rounds half to even.
    return _mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(_mm256_mul_ps(v, inv), upper), zero));
  };
  int64_t c = 0;
  for (; c + 32 <= n; c += 32) {
    const __m256i i0 = convert(_mm256_loadu_ps(x + c)), i1 = convert(_mm256_loadu_ps(x + c + 8));
    const __m256i i2 = convert(_mm256_loadu_ps(x + c + 16)), i3 = convert(_mm256_loadu_ps(x + c + 24));
    const __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(m + c), _mm256_permutevar8x32_epi32(bytes, order));
  }
  int seen = (_mm256_movemask_ps(nans) ? kBlockSawNan : 0) | (_mm256_movemask_ps(negatives) ? kBlockSawNegative : 0);
  if (c < n) seen |= kernels_ref::bfp_block_bytes(x + c, n - c, inverse, top, m + c);
  return seen;
}

// int8's activation quantizer (tile.h KernelSet::int8_bytes, int8_words), 32 or 16 values at a time,
// the rest on the reference loops; as the reference, x / scale is clamped to +-512 first (every value
// beyond saturates) so that the conversion to int32 stays in range. VDIVPS divides as the scalar
// division does, and VCVTPS2DQ rounds half to even. MINPS gives its second operand for a NaN.
namespace {
struct Int8Quantizer {
  __m256 scale, lo = _mm256_set1_ps(-512.0f), hi = _mm256_set1_ps(512.0f), nans = _mm256_setzero_ps();
  __m256i zero_point;

  Int8Quantizer(float s, int zp) : scale(_mm256_set1_ps(s)), zero_point(_mm256_set1_epi32(zp)) {}

  // round_half_even(x / scale) + zero_point as int32 (not yet clamped to 0..255).
  __m256i convert(const float* x) {
    const __m256 v = _mm256_loadu_ps(x);
    nans = _mm256_or_ps(nans, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    return _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(_mm256_div_ps(v, scale), hi), lo)),
                            zero_point);
  }
  bool saw_nan() const { return _mm256_movemask_ps(nans) != 0; }
};
}  // namespace

bool int8_bytes(const float* x, int64_t n, float scale, int zero_point, uint8_t flip, uint8_t* q) {
  Int8Quantizer z(scale, zero_point);
  const __m256i flips = _mm256_set1_epi8(static_cast<char>(flip));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // as in bfp_block_bytes
  int64_t c = 0;
  for (; c + 32 <= n; c += 32) {
    const __m256i i0 = z.convert(x + c), i1 = z.convert(x + c + 8), i2 = z.convert(x + c + 16),
                  i3 = z.convert(x + c + 24);
    // PACKSSDW keeps every value (at most 512 + 255 in magnitude); PACKUSWB clamps to 0..255.
    const __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + c),
                        _mm256_xor_si256(_mm256_permutevar8x32_epi32(bytes, order), flips));
  }
  const bool nan = z.saw_nan();
  return (c < n && kernels_ref::int8_bytes(x + c, n - c, scale, zero_point, flip, q + c)) || nan;
}

bool int8_words(const float* x, int64_t n, float scale, int zero_point, int16_t* w) {
  Int8Quantizer z(scale, zero_point);
  const __m256i lowest = _mm256_setzero_si256(), highest = _mm256_set1_epi32(255);
  auto word = [&](const float* at) {
    return _mm256_sub_epi32(_mm256_min_epi32(_mm256_max_epi32(z.convert(at), lowest), highest), z.zero_point);
  };
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) {
    // PACKSSDW works within 128-bit lanes (a.lo b.lo a.hi b.hi): VPERMQ puts the quarters in order.
    const __m256i words = _mm256_packs_epi32(word(x + c), word(x + c + 8));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + c), _mm256_permute4x64_epi64(words, 0xd8));
  }
  const bool nan = z.saw_nan();
  return (c < n && kernels_ref::int8_words(x + c, n - c, scale, zero_point, w + c)) || nan;
}

const KernelSet set{Isa::avx2,
                    "avx2 f32 6x16",
                    kMr,
                    kNr,
                    tile_f32,
                    "avx2 u8*s8 6x16",
                    bfp_avx2::kRows,
                    tile_bfp,
                    true,
                    bfp_block_max,
                    bfp_block_bytes,
                    /*bfp_tap_index=*/true,
                    /*int8_signed_bytes=*/true,
                    /*tile_int8_words=*/tile_bfp,
                    int8_bytes,
                    int8_words,
                    tile_gemm,
                    winograd_input,
                    winograd_output,
                    adam};

}  // namespace toptag::kernels_avx2
