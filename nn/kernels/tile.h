// The micro-kernels behind toptag's inference convolutions: one register-blocked tile of an
// implicit GEMM, with the output stage fused.
//
// A convolution over channels-last (NHWC) activations is a GEMM whose rows are output pixels and whose
// columns are output channels: out[m, k] = sum over taps t and input channels c of
// in[pixel(m, t), c] * w[k, t, c]. Rows are never copied into an im2col matrix; the kernel reads them
// through an indirection table, one pointer per (row, tap) to the C contiguous channels of the input
// pixel that tap reads (or to zeros, in the padding). A 1x1 convolution has one tap, and the table
// points at consecutive rows: it is a plain GEMM.
//
// Weights are packed once, when a model is frozen for inference, into panels of `nr` output channels:
// panel[t][c][0..nr), zero-padded past the last channel. One call computes a tile of up to `mr` rows by
// one panel, keeping the mr x nr sums in registers over the whole reduction, then runs the output stage
// on them: + bias, * scale, + residual, ReLU, and stores.
//
// The interface is laid out for integer formats too (the quantized-execution issue): weights and
// activations travel as untyped pointers whose element type the kernel set fixes, and the output
// stage's per-channel scale turns an integer sum into floats. The block floating point tiles below
// are the first integer kernels.
#pragma once

#include <cstdint>

#include "nn/kernels/isa_id.h"

namespace toptag {

// What a tile's output stage does to its sums, in this order. Each pointer may be null.
struct OutputStage {
  const float* scale = nullptr;     // per output channel multiplier (integer formats; null: 1)
  const float* bias = nullptr;      // per output channel, indexed like the tile's columns
  const float* residual = nullptr;  // added elementwise: residual[i * ld_residual + j]
  int64_t ld_residual = 0;
  bool relu = false;  // max(0, .) last; NaN stays NaN
};

// Weights the next tiles will read (the next panel), asked into the cache while a tile computes:
// `lines` 64-byte lines from `at`, lines_per_step of them per reduction step (a channel, or a group
// of 4 channels in the integer tiles). A panel read by a few tiles is bound by memory unless its
// reading overlaps the previous panel's work.
struct PanelPrefetch {
  const void* at = nullptr;
  int64_t lines = 0;
  int lines_per_step = 1;
};

struct TileArgs {
  const void* const* rows;  // rows * taps pointers, row-major: rows[i * taps + t] -> `channels` values
  int row_count;            // 1..mr
  int taps;
  // The panel's tap each of the `taps` reads: tap_index[t] (null: tap t). A tile whose rows all read
  // the padding at some taps (a small map, rows pixel by pixel) passes only the others. Every
  // tile_f32 honours it (the integer tiles: KernelSet::bfp_tap_index).
  const int* tap_index = nullptr;
  int64_t channels;
  const void* panel;  // packed weights: the panel's taps * channels * nr values
  float* out;         // out[i * ld_out + j] for i < row_count, j < col_count
  int64_t ld_out;
  int col_count;  // 1..nr valid output channels in this panel
  OutputStage stage;
  PanelPrefetch prefetch;
};

// One tile of training's GEMM (nn/kernels/tiled_gemm.h): c[i][j] (+)= sum over k of a(i, k) b[k][j], for
// i < row_count and j < col_count. A is read where it lies: row-major (a(i, k) = a[i * lda + k]) or,
// with k_major, stored transposed (a(i, k) = a[k * lda + i]: op(A) of a product with trans_a). B is a
// panel of nr columns, b[k * ldb + j] for every j < nr: a packed panel (ldb = nr) or, where nr whole
// columns lie side by side, the matrix itself.
struct GemmTileArgs {
  const float* a;
  int64_t lda;
  bool k_major;
  int row_count;  // 1..mr
  int64_t depth;  // k < depth
  const float* b;
  int64_t ldb;
  float* c;
  int64_t ldc;
  int col_count;    // 1..nr
  bool accumulate;  // add to c instead of overwriting it
};

// One Adam step (training/adam.h) over n parameters, with the step's scalars:
//   m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2,
//   w = w * decay - step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps).
// The reference divides; the SIMD sets multiply by the CPU's estimate of the reciprocal after one
// Newton step: within 4 ulp of the quotient (tests/test_kernels.cpp) for a divisor from eps > 0 up to
// the largest float, and a divisor of inf (v overflowed) gives a step of 0, as the division does.
// On 2 threads the division was half of the update's time: 25.6M parameters (ResNet-50) took 29 ms
// with it and 15 ms without, as fast as memory allows (Intel Xeon, AVX-512). The sqrt stays exact.
struct AdamStep {
  float b1, b2, step_size, inv_sqrt_bc2, eps, decay;
};

// Block floating point (bfp<E,M,B>, Brainwave's ms-fp8 among them), as integers. Both operands are
// mantissas with one power-of-two step per block of input channels: an activation block is one
// pixel's channels [b*B, (b+1)*B), a weight block the same channels of one output channel and tap.
// Within a block the dot product is an exact integer sum of mantissa products; each block's sum is
// then scaled by the two steps and accumulated in float32.
//
// Activations arrive as pixel records (nn/kernels/bfp.h): `blocks` float steps, then the pixel's
// mantissas as unsigned bytes (the layers' inputs follow a ReLU, so they are never negative), zero-
// padded to groups of 4 channels. Weights are packed per panel as [tap][group][nr][4] signed bytes,
// four consecutive input channels of one output channel next to each other (the operand order of
// x86's VPDPBUSD and VPMADDUBSW), with their steps as [tap][block][nr] floats.
struct BfpTileArgs {
  const void* const* rows;  // rows[i * taps + t] -> the record of the pixel tap t of row i reads
  int row_count;            // 1..mr
  int taps;
  // As TileArgs: the panel's tap each of `taps` reads (null: tap t). Only on sets with bfp_tap_index,
  // and for int8 (whole_reduction), which every tile takes it for.
  const int* tap_index = nullptr;
  int64_t groups;        // input channels / 4, rounded up
  int64_t block_groups;  // groups per block (B / 4)
  int64_t blocks;        // ceil(input channels / B)
  const int8_t* panel;   // the panel's taps * groups * nr * 4 mantissas
  const float* steps;    // the panel's taps * blocks * nr weight steps
  float* out;            // as TileArgs
  int64_t ld_out;
  int col_count;
  OutputStage stage;
  bool int16_sums;  // a whole block's pair sums fit in int16 (bfp.h): AVX2 widens once per block
  // int8: every tap and block has the same steps, so the whole reduction is one exact int32 sum, from
  // which offsets[j] is subtracted before it is scaled once (by the first tap's steps; a NaN step of
  // any tap still makes the row NaN). offsets[j] is the zero point's share of the taps read: the zero
  // point times column j's weight sum over them (KernelSet::int8_signed_bytes: the zero point less
  // 128), summed by the caller (PackedBfpConv::offsets). Only on tiles with tile_bfp_full_bytes;
  // every tile takes tap_index here.
  bool whole_reduction = false;
  const int32_t* offsets = nullptr;  // [nr]
  // int8 as 16-bit words (KernelSet::tile_int8_words; whole_reduction also set): the records hold
  // q - zero_point as int16 (quantize_u8_words, bfp.h), `groups * 4` of them, and the panel is
  // word_panel, [taps][groups * 2][nr][2] int16, two input channels of one output channel side by
  // side (the operand order of VPMADDWD). The zero point is already out of the sums: no offsets.
  const int16_t* word_panel = nullptr;
  PanelPrefetch prefetch;
};

// The helpers below are static: this header is compiled for several instruction sets, and an inline
// function's one linked copy could be the one compiled for AVX-512 (see tile_simd.inc).

// The panel's tap that tap `tap` of a tile reads (BfpTileArgs::tap_index).
static inline int panel_tap(const BfpTileArgs& t, int tap) {
  return t.tap_index ? t.tap_index[tap] : tap;
}

// int8: row i's activation step (a record's first 4 bytes; every tap's is the same), NaN if any tap's
// record has a NaN step, and 0 for a row with no taps (an output pixel whose every tap reads the
// padding sums nothing). Read after the accumulation: guards held through it take registers.
static inline float int8_row_step(const BfpTileArgs& t, int i) {
  if (t.taps == 0) return 0.0f;
  float nan_guard = 0;
  for (int tap = 0; tap < t.taps; ++tap) nan_guard += 0 * static_cast<const float*>(t.rows[i * t.taps + tap])[0];
  return static_cast<const float*>(t.rows[i * t.taps])[0] + nan_guard;
}

// The widest panel of any kernel set (AVX-512's): a caller's per-column scratch holds this many.
constexpr int kMaxNr = 32;

// One instruction set's kernels, and the tile shape they were written for.
struct KernelSet {
  Isa isa;
  const char* name;  // "avx512 f32 12x32"
  int mr, nr;        // rows per tile, output channels per panel
  void (*tile_f32)(const TileArgs&);
  const char* bfp_name;  // the integer tile: "avx512-vnni u8*s8 12x32"
  int bfp_mr;            // rows per block floating point tile (its panels are nr wide, as tile_f32's)
  void (*tile_bfp)(const BfpTileArgs&);
  bool tile_bfp_full_bytes;  // exact for activation bytes up to 255 (int8), not only up to 127
  // The block floating point activation quantizer's two passes over one block (nn/kernels/bfp.cpp),
  // vectorised for this set: the block's largest value (NaNs skipped; 0 for none above 0), and its
  // mantissa bytes m[c] = round_half_even(min(x[c] * inverse, top)) (NaN: top; negative: 0), returning
  // which of kBlockSawNan and kBlockSawNegative it met.
  float (*bfp_block_max)(const float* x, int64_t n);
  int (*bfp_block_bytes)(const float* x, int64_t n, float inverse, float top, uint8_t* m);
  // The integer tile is given BfpTileArgs::tap_index for block floating point (int8: every set). Every
  // tile honours it. The AVX2 tile's block loops with it measured 12% slower on every layer, used or
  // not, on an Intel Xeon (TOPTAG_ISA=avx2), and faster on AMD Zen 3, the AVX2-only machine here (a
  // 3x3 layer onto a 2x2 map at batch 64 in half the time; batch-1 layers no slower): the AVX2 set
  // takes it. The AVX-512 set without VNNI, which runs the same tile on Intel CPUs only, does not.
  bool bfp_tap_index = false;
  // int8 on this tile takes each activation byte q as the signed byte q - 128, stored so by the
  // quantizer (AVX2, whose VPMADDUBSW is exact only so: tile_bfp_avx2.inc). Its offsets then hold
  // (zero point - 128) times the column's weight sum, and its weights must lie in [-127, 127]
  // (pack_conv_int8, int8_tile_takes).
  bool int8_signed_bytes = false;
  // int8 on 16-bit words (BfpTileArgs::word_panel), for layers with rows enough that the twice larger
  // weights stay in cache while they are reused (int8_words_pay, bfp.h); null where the byte tile is
  // as fast (VNNI's VPDPBUSD). AVX2 has no exact u8*s8 multiply-add into int32: its byte tile spends
  // 7 multiply-port instructions on 64 products (tile_bfp_avx2.inc), the word tile 4.
  void (*tile_int8_words)(const BfpTileArgs&) = nullptr;
  // int8's activation quantizer (nn/kernels/bfp.h quantize_u8_activations, quantize_u8_words),
  // vectorised for this set, over n values of one pixel: q = clamp(round_half_even(x / scale) +
  // zero_point, 0, 255), x / scale divided in float as the emulation divides. int8_bytes stores q ^ flip,
  // int8_words q - zero_point as int16. Both return whether x held a NaN (its value is then any q).
  bool (*int8_bytes)(const float* x, int64_t n, float scale, int zero_point, uint8_t flip, uint8_t* q) = nullptr;
  bool (*int8_words)(const float* x, int64_t n, float scale, int zero_point, int16_t* w) = nullptr;
  // Training's GEMM tile, mr x nr as tile_f32.
  void (*tile_gemm)(const GemmTileArgs&) = nullptr;
  // Winograd F(2x2, 3x3)'s transforms of one tile (nn/kernels/winograd.h), over n channels:
  //   winograd_input:  v[p][c] = (B^T d B)[p], d[i * 4 + j] -> the channels of the tile's input pixel
  //                    (i, j), or zeros in the padding;
  //   winograd_output: y[o][k] = (A^T m A)[o] + bias[k] (+ r[o][k]) (ReLU), m[p] -> point p's products;
  //                    y[o] null for an output past the map's edge, r null without a residual.
  void (*winograd_input)(const float* const* d, float* const* v, int64_t n) = nullptr;
  void (*winograd_output)(const float* const* m, float* const* y, const float* const* r, const float* bias, bool relu,
                          int64_t n) = nullptr;
  // Training's optimizer update (AdamStep above) of w, m and v from the gradient g, n values.
  void (*adam)(const AdamStep& a, float* w, const float* g, float* m, float* v, int64_t n) = nullptr;
};
constexpr int kBlockSawNan = 1, kBlockSawNegative = 2;

const KernelSet& kernels(Isa isa);

// The per-ISA tables, each defined in its own file compiled for that instruction set.
namespace kernels_avx2 {
extern const KernelSet set;
}
namespace kernels_avx512 {
extern const KernelSet set;
}
namespace kernels_avx512_vnni {
void tile_bfp(const BfpTileArgs& t);  // 12 x 32, for CPUs with AVX512_VNNI
}
namespace kernels_avx2 {
constexpr int kBfpRows = 6;                      // rows per AVX2 block floating point tile
void tile_bfp_nr32(const BfpTileArgs& t);        // AVX2's tile over 32-wide panels: AVX-512 CPUs without VNNI
float bfp_block_max(const float* x, int64_t n);  // the quantizer's loops, also the AVX-512 set's
int bfp_block_bytes(const float* x, int64_t n, float inverse, float top, uint8_t* m);
bool int8_bytes(const float* x, int64_t n, float scale, int zero_point, uint8_t flip, uint8_t* q);
bool int8_words(const float* x, int64_t n, float scale, int zero_point, int16_t* w);
}  // namespace kernels_avx2
namespace kernels_ref {
constexpr int kMr = 4, kNr = 8;
void tile_gemm(const GemmTileArgs& t);  // nn/kernels/tiled_gemm.cpp
void tile_bfp(const BfpTileArgs& t);    // nn/kernels/bfp.cpp
float bfp_block_max(const float* x, int64_t n);
int bfp_block_bytes(const float* x, int64_t n, float inverse, float top, uint8_t* m);
bool int8_bytes(const float* x, int64_t n, float scale, int zero_point, uint8_t flip, uint8_t* q);
bool int8_words(const float* x, int64_t n, float scale, int zero_point, int16_t* w);
// nn/kernels/winograd.cpp
void winograd_input(const float* const* d, float* const* v, int64_t n);
void winograd_output(const float* const* m, float* const* y, const float* const* r, const float* bias, bool relu,
                     int64_t n);
void adam(const AdamStep& a, float* w, const float* g, float* m, float* v, int64_t n);  // nn/kernels/adam.cpp
}  // namespace kernels_ref

}  // namespace toptag
