// The AVX-512 VNNI block floating point tile (tile.h, BfpTileArgs): up to 12 rows by 32 output
// channels. VPDPBUSD multiplies 4 unsigned activation bytes by 4 signed weight bytes and adds the
// four products to an int32 lane, exactly; at the end of each block the int32 sums are scaled by the
// two steps and added to float32 sums. Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni
// (nn/CMakeLists.txt); only called on CPUs with AVX512_VNNI (nn/kernels/packed_conv.cpp kernels()).
#include <immintrin.h>

#include "nn/kernels/tile.h"

namespace toptag::kernels_avx512_vnni {

namespace {

constexpr int kRows = 12, kCols = 32;

inline __m512i broadcast_group(const uint8_t* a) {
  int v;
  __builtin_memcpy(&v, a, 4);
  return _mm512_set1_epi32(v);
}

typedef int int16x32 __attribute__((vector_size(64)));
typedef float float16 __attribute__((vector_size(64)));

// int32 lanes to floats (exact below 2^24; a block's sums are far below).
inline __m512 to_float(__m512i v) {
  return reinterpret_cast<__m512>(__builtin_convertvector(reinterpret_cast<int16x32>(v), float16));
}

// acc += the 4-byte dot products of unsigned a and signed w, in place. GCC 12 compiles the intrinsic
// _mm512_dpbusd_epi32 inside this loop into a copy to a scratch register, the instruction and a copy
// back, plus a store to the stack, per accumulator and step; the asm keeps each accumulator in its
// register.
inline void dot_add(__m512i& acc, __m512i a, __m512i w) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(w));
}

// The next panel's lines this tile asks for (tile.h PanelPrefetch), a few per reduction step.
struct NextLines {
  const char* at;
  const char* end;
  int per_step;

  explicit NextLines(const PanelPrefetch& p)
      : at(static_cast<const char*>(p.at)), end(at + p.lines * 64), per_step(p.lines_per_step) {}
  void step() {
    if (at >= end) return;
    __builtin_prefetch(at, 0, 2);
    if (per_step > 1) __builtin_prefetch(at + 64, 0, 2);
    at += 64 * per_step;
  }
};

// acc += the dot products of rows a[i]'s channel groups [g0, g1) with the panel's, w pointing at
// group g0 (and left past g1 - 1): 4 bytes of each row against 32 output channels' 4 bytes, per step.
// The panel streams from memory once per tile: it is asked for 16 steps (2 KB) ahead of its use.
template <int ROWS>
__attribute__((always_inline)) inline void accumulate_groups(__m512i (&acc0)[ROWS], __m512i (&acc1)[ROWS],
                                                             const uint8_t* const (&a)[ROWS], const int8_t*& w, long g0,
                                                             long g1, NextLines& next) {
  constexpr long kGroupBytes = kCols * 4, kAhead = 16 * kGroupBytes;
  for (long g = g0; g < g1; ++g, w += kGroupBytes) {
    __builtin_prefetch(w + kAhead);
    __builtin_prefetch(w + kAhead + 64);
    next.step();
    const __m512i w0 = _mm512_loadu_si512(w), w1 = _mm512_loadu_si512(w + 64);
#pragma GCC unroll 12
    for (int i = 0; i < ROWS; ++i) {
      const __m512i ai = broadcast_group(a[i] + g * 4);
      dot_add(acc0[i], ai, w0);
      dot_add(acc1[i], ai, w1);
    }
  }
}

// int8 (BfpTileArgs::whole_reduction): one exact int32 sum per output over the taps read and every
// channel, less the zero point's share at those taps, scaled once.
template <int ROWS>
void whole_reduction_rows(const BfpTileArgs& t, float (&sums)[ROWS][kCols]) {
  constexpr long kGroupBytes = kCols * 4;
  __m512i acc0[ROWS], acc1[ROWS];
#pragma GCC unroll 12
  for (int i = 0; i < ROWS; ++i) acc0[i] = acc1[i] = _mm512_setzero_si512();
  NextLines next(t.prefetch);
  for (int tap = 0; tap < t.taps; ++tap) {
    const uint8_t* a[ROWS];  // the bytes after each record's step
#pragma GCC unroll 12
    for (int i = 0; i < ROWS; ++i) a[i] = static_cast<const uint8_t*>(t.rows[i * t.taps + tap]) + sizeof(float);
    const int8_t* w = t.panel + panel_tap(t, tap) * t.groups * kGroupBytes;
    accumulate_groups<ROWS>(acc0, acc1, a, w, 0, t.groups, next);
  }
  const __m512i o0 = t.offsets ? _mm512_loadu_si512(t.offsets) : _mm512_setzero_si512();
  const __m512i o1 = t.offsets ? _mm512_loadu_si512(t.offsets + 16) : _mm512_setzero_si512();
  const __m512 s0 = _mm512_loadu_ps(t.steps), s1 = _mm512_loadu_ps(t.steps + 16);
#pragma GCC unroll 12
  for (int i = 0; i < ROWS; ++i) {
    const __m512 as = _mm512_set1_ps(int8_row_step(t, i));
    _mm512_store_ps(sums[i], _mm512_mul_ps(to_float(_mm512_sub_epi32(acc0[i], o0)), _mm512_mul_ps(s0, as)));
    _mm512_store_ps(sums[i] + 16, _mm512_mul_ps(to_float(_mm512_sub_epi32(acc1[i], o1)), _mm512_mul_ps(s1, as)));
  }
}

template <int ROWS>
void rows(const BfpTileArgs& t) {
  // The float sums live in memory: each is touched once per block, and keeping them out of the
  // registers leaves all 24 int32 accumulators there through the block's loop.
  alignas(64) float sums[ROWS][kCols] = {};
  constexpr long kGroupBytes = kCols * 4;
  if (t.whole_reduction) whole_reduction_rows<ROWS>(t, sums);
  NextLines next(t.prefetch);
  for (int tap = 0; tap < (t.whole_reduction ? 0 : t.taps); ++tap) {
    const uint8_t* a[ROWS];
    const float* astep[ROWS];
#pragma GCC unroll 12
    for (int i = 0; i < ROWS; ++i) {
      astep[i] = static_cast<const float*>(t.rows[i * t.taps + tap]);
      a[i] = reinterpret_cast<const uint8_t*>(astep[i] + t.blocks);
    }
    const int weight_tap = panel_tap(t, tap);
    const int8_t* w = t.panel + weight_tap * t.groups * kGroupBytes;
    const float* wstep = t.steps + weight_tap * t.blocks * kCols;
    for (long b = 0; b < t.blocks; ++b) {
      const long g0 = b * t.block_groups, g1 = g0 + t.block_groups < t.groups ? g0 + t.block_groups : t.groups;
      __m512i acc0[ROWS], acc1[ROWS];
#pragma GCC unroll 12
      for (int i = 0; i < ROWS; ++i) acc0[i] = acc1[i] = _mm512_setzero_si512();
      accumulate_groups<ROWS>(acc0, acc1, a, w, g0, g1, next);
      const __m512 s0 = _mm512_loadu_ps(wstep + b * kCols), s1 = _mm512_loadu_ps(wstep + b * kCols + 16);
#pragma GCC unroll 12
      for (int i = 0; i < ROWS; ++i) {
        const __m512 as = _mm512_set1_ps(astep[i][b]);
        _mm512_store_ps(sums[i], _mm512_fmadd_ps(to_float(acc0[i]), _mm512_mul_ps(s0, as), _mm512_load_ps(sums[i])));
        _mm512_store_ps(sums[i] + 16,
                        _mm512_fmadd_ps(to_float(acc1[i]), _mm512_mul_ps(s1, as), _mm512_load_ps(sums[i] + 16)));
      }
    }
  }
  // The output stage, 16 columns at a time; a panel's last columns through a mask.
  const OutputStage& st = t.stage;
  for (int half = 0; half < 2; ++half) {
    const int j0 = half * 16, cols = t.col_count - j0;
    if (cols <= 0) break;
    const __mmask16 mask = cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1);
    const __m512 scale = st.scale ? _mm512_maskz_loadu_ps(mask, st.scale + j0) : _mm512_set1_ps(1.0f);
    const __m512 bias = st.bias ? _mm512_maskz_loadu_ps(mask, st.bias + j0) : _mm512_setzero_ps();
#pragma GCC unroll 12
    for (int i = 0; i < ROWS; ++i) {
      __m512 v = _mm512_fmadd_ps(_mm512_load_ps(sums[i] + j0), scale, bias);
      if (st.residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, st.residual + i * st.ld_residual + j0));
      if (st.relu)
        v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), v, _mm512_setzero_ps());
      _mm512_mask_storeu_ps(t.out + i * t.ld_out + j0, mask, v);
    }
  }
}

template <int ROWS>
void dispatch(const BfpTileArgs& t) {
  if constexpr (ROWS > 1) {
    if (t.row_count < ROWS) return dispatch<ROWS - 1>(t);
  }
  rows<ROWS>(t);
}

}  // namespace

void tile_bfp(const BfpTileArgs& t) {
  for (int r0 = 0; r0 < t.row_count; r0 += kRows) {
    BfpTileArgs s = t;
    s.rows = t.rows + r0 * t.taps;
    s.row_count = t.row_count - r0 < kRows ? t.row_count - r0 : kRows;
    s.out = t.out + r0 * t.ld_out;
    if (t.stage.residual) s.stage.residual = t.stage.residual + r0 * t.stage.ld_residual;
    dispatch<kRows>(s);
  }
}

}  // namespace toptag::kernels_avx512_vnni
