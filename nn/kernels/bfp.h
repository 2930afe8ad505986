// Block floating point convolutions as integer arithmetic (nn/kernels/tile.h, BfpTileArgs).
//
// A layer whose weights and inputs are both bfp<E,M,B> with the same block B (Brainwave's ms-fp8 is
// bfp<5,2,128>) computes, for each block of B input channels of one tap, an exact integer sum of
// mantissa products, scaled by the two blocks' power-of-two steps and accumulated in float32 across
// blocks and taps. The float emulation (quantize/, fake_quantize) computes the same products, but
// sums them in float32: the two agree to float32 rounding of the sums (tests/test_bfp_kernels.cpp).
//
// What runs where: mantissas must fit a byte (M <= 7), blocks a whole number of 4-channel groups
// (B % 4 == 0), and the layer's inputs must follow a ReLU (the activation mantissas are unsigned
// bytes). The inference plan gives every other quantized layer (the stem, whose input is the image)
// the float kernels on its decoded weights and fake-quantized inputs.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "nn/kernels/packed_conv.h"
#include "nn/kernels/packed_on_first_use.h"

namespace toptag {

// The parameters of a bfp<E,M,B> format the kernels need (quantize/format.h defines the format).
struct BlockFormat {
  int mantissa_bits = 2;
  int block = 128;
  int exponent_min = -15, exponent_max = 15;  // +-(2^(E-1) - 1)

  bool operator==(const BlockFormat&) const = default;
};

// The exponent e of a block whose largest magnitude is `max`, as the emulation defines it: floor(log2
// max) clamped to [lo, hi], lo for an all-zero block and hi for an infinite one. Exact for the
// exponent ranges of E <= 8 bits (lo >= -127), read off the float's bits.
int bfp_block_exponent(float max, int lo, int hi);
// 2^k as a double, exactly (|k| < 1023).
double power_of_two(int k);

// Whether the integer kernels can run a layer with these weight and input formats (see above).
bool bfp_kernels_apply(const BlockFormat& weights, const BlockFormat& inputs);

// int8 on the same tiles: activations affine uint8 per tensor, q = clamp(round_half_even(x / scale)
// + zero_point, 0, 255) (quantize/format.h), as one block per pixel and tap whose step is `scale`;
// weights symmetric int8 per output channel, whose scale is the weight step of every tap. The zero
// point's share at a tap, zero_point * the sum of the channel's weights there, is a constant per
// output channel and tap; the shares of the taps a tile reads are subtracted from the exact int32 sum
// over those taps and every channel before it is scaled, once. The bytes use all of 0..255, which
// only tiles that multiply them exactly run (KernelSet::tile_bfp_full_bytes: all of toptag's; AVX2's
// takes them as signed bytes less 128, with the 128 in the shares, and weights in [-127, 127] only:
// KernelSet::int8_signed_bytes).
struct AffineU8 {
  float scale = 1;
  int zero_point = 0;
};

// Activations quantized for the kernels: one record per pixel (or per row of a (N, I) input), of
// `blocks` float steps 2^(e + 1 - M) and then `groups * 4` mantissa bytes, channels past C zero (int8
// signed bytes: 0x80, which is 0).
// A block holding a NaN gets a NaN step, so the NaN reaches every output that reads it (as in the
// emulation); an inf saturates to the largest mantissa.
struct BfpActivations {
  int64_t pixels = 0, channels = 0, groups = 0, blocks = 0;
  int64_t value_bytes = 1;  // 2: int8 as 16-bit words (quantize_u8_words)
  Tensor storage;           // pixels * record_floats(), from the buffer pool

  // A group of 4 bytes is one float's room, of 4 words two.
  int64_t record_floats() const { return blocks + groups * value_bytes; }
  const float* steps(int64_t pixel) const { return storage.data() + pixel * record_floats(); }
  const uint8_t* mantissas(int64_t pixel) const { return reinterpret_cast<const uint8_t*>(steps(pixel) + blocks); }
};

// x: `pixels` rows of `channels` floats, none negative (throws toptag::Error on a negative value),
// quantized by the loops of `isa`'s kernel set (every set gives the same bytes).
BfpActivations quantize_bfp_activations(const float* x, int64_t pixels, int64_t channels, const BlockFormat& f,
                                        Isa isa);
// The emulation's block floating point quantizer as values (quantize/format.cpp quantize_bfp over
// (pixels, channels), blocks along channels), signed inputs too, for the float kernels' quantized
// inputs (the stem's image): y = sign(x) min(round_half_even(|x| / step), 2^M - 1) step, a NaN
// staying NaN and its block's step set by the rest. Computed in float where every step and its
// reciprocal are normal floats, which makes it exact (in the default round-to-nearest mode, as the
// kernels' quantizer; the emulation rounds without the floating-point environment); the caller runs
// the emulation otherwise.
bool fake_quantize_bfp_exact_in_float(const BlockFormat& f);
void fake_quantize_bfp(const float* x, int64_t pixels, int64_t channels, const BlockFormat& f, float* y);

// The int8 records: one block of all `channels` per pixel, its step the scale (NaN if the pixel holds one).
// `ks`: the set whose tile reads them, and whose vector loops quantize (KernelSet::int8_bytes; every
// set gives the same values). Where its tile takes signed bytes (KernelSet::int8_signed_bytes), each
// byte q is stored as q ^ 0x80, which is q - 128 as a signed byte.
BfpActivations quantize_u8_activations(const float* x, int64_t pixels, int64_t channels, const AffineU8& a,
                                       const KernelSet& ks = kernels(Isa::ref));
// The int8 records as 16-bit words for KernelSet::tile_int8_words: each value q - zero_point, an int16
// (channels past C: 0), after the same step.
BfpActivations quantize_u8_words(const float* x, int64_t pixels, int64_t channels, const AffineU8& a,
                                 const KernelSet& ks = kernels(Isa::ref));
// The same quantizer as values: y = (q(x) - zero_point) * scale, NaN staying NaN, for the float kernels
// where the tile cannot take int8 (quantize/format.h's int8 activation quantizer, vectorised).
void fake_quantize_u8(const float* x, int64_t n, const AffineU8& a, float* y);

// A weight's exact BFP encoding, as quantize/ stores it: signed mantissas in the weight's (K, C, R, S)
// shape, and exponents [K][ceil(C / B)][R * S].
struct BfpWeight {
  int64_t K = 0, C = 0, R = 0, S = 0;
  std::span<const int32_t> mantissas;
  std::span<const int8_t> exponents;
  BlockFormat format;
};

// An int8 layer's weights for the word tile: panels x [taps][groups * 2][nr][2] int16 (tile.h
// BfpTileArgs::word_panel), and a padding pixel's word record (the scale, zeros).
struct Int8Words {
  std::vector<int16_t> weights;
  std::vector<float> zero_record;
};
int64_t toptag_packed_bytes(const Int8Words& words);
struct PackedBfpConv;
// The word panels of `conv`, packed from its byte panels (conv.words->get() packs them on first use).
Int8Words pack_int8_words(const PackedBfpConv& conv);

// A convolution's BFP weights packed for one kernel set.
struct PackedBfpConv : ConvShape {
  const KernelSet* kernels = nullptr;
  BlockFormat input;                   // how the layer's input is quantized (block floating point) ...
  std::optional<AffineU8> int8_input;  // ... or as int8
  int64_t panels = 0, groups = 0, blocks = 0, block_groups = 0;
  std::vector<int8_t> weights;     // panels x [taps][groups][nr][4] mantissas, zero past K and C
  std::vector<float> steps;        // panels x [taps][blocks][nr] weight steps, zero past K
  std::vector<float> bias;         // panels x nr
  std::vector<float> zero_record;  // a pixel in the padding: zero steps and mantissas (int8: the scale, zero point)
  bool int16_sums = false;         // BfpTileArgs::int16_sums
  // int8 (empty for bfp): the zero point's share of each column's sum (BfpTileArgs::offsets), per tap
  // as panels x [taps][nr], for a pixel whose taps in the padding are skipped, and over every tap as
  // panels x [nr] (a tap in the padding reads the zero point's byte, so it has its share too).
  std::vector<int32_t> offsets, offset_totals;
  // int8 on the word tile (KernelSet::tile_int8_words; null without one), packed on first use: only
  // the layers that run on it hold its memory (twice the bytes').
  std::shared_ptr<const PackedOnFirstUse<Int8Words>> words;

  int64_t panel_size() const { return taps() * groups * kernels->nr * 4; }  // also Int8Words' per panel
  int64_t panel_steps() const { return taps() * blocks * kernels->nr; }
};

// Throws toptag::Error when bfp_kernels_apply() is false or the encoding does not fit the shape.
PackedBfpConv pack_conv_bfp(const BfpWeight& weight, const Tensor* bias, Conv2dParams params, const BlockFormat& input,
                            Isa isa);

// Whether the integer tile of `kernels` can run int8 with these weights: a tile for full-range bytes, and
// no weight of -128 on one that reads the bytes signed (fixed<8,I> weights reach -128; int8's stop at -127).
bool int8_tile_takes(const KernelSet& kernels, std::span<const int32_t> weights);

// int8 weights (K, C, R, S), signed bytes, with one scale per output channel, for a kernel set
// (kernels(isa), or a test's own), which must outlive the result. Throws when int8_tile_takes() is false.
PackedBfpConv pack_conv_int8(int64_t K, int64_t C, int64_t R, int64_t S, std::span<const int32_t> weights,
                             std::span<const float> scales, const Tensor* bias, Conv2dParams params,
                             const AffineU8& input, const KernelSet& kernels);

// Which tile runs an int8 layer: the byte tile, the word tile (KernelSet::tile_int8_words), or the one
// that pays for this many output rows (int8_words_pay).
enum class Int8Tile { chosen, bytes, words };
// Whether the word tile runs an int8 layer of `rows` output rows: it has one, and every panel's twice
// larger weights serve enough rows to be worth reading (a batch of jets; not one jet's last stages).
bool int8_words_pay(const PackedBfpConv& conv, int64_t rows);
// Whether conv_nhwc_bfp runs `conv` (int8) on the word tile for `rows` output rows, asked for `tile`.
bool int8_runs_on_words(const PackedBfpConv& conv, int64_t rows, Int8Tile tile = Int8Tile::chosen);

// One layer input's block floating point records, kept for the next layer that reads the same tensor
// in the same format (a ResNet block's shortcut and its first convolution). It holds the tensor, so
// its buffer cannot be reused for another while the records stand for it; the tensor must not be
// written in place meanwhile.
struct QuantizedInputCache {
  Tensor source;
  BlockFormat format;
  BfpActivations records;
};

// Whether conv_nhwc_bfp runs every panel of a tile's rows before the next rows (weights this small
// stay in L1) rather than each panel over a chunk of rows.
bool bfp_rows_outer(int64_t weight_bytes, int64_t rows);

// y = conv(quantized x) + bias [+ residual] [ReLU]: conv_nhwc's contract, x quantized on the way in,
// or taken from `cache` when it holds x's records in this layer's format (block floating point
// inputs only; int8 is quantized each time). A quantization made here is left in `cache`.
Tensor conv_nhwc_bfp(const PackedBfpConv& conv, const Tensor& x, const Tensor* residual, bool relu,
                     QuantizedInputCache* cache = nullptr, Int8Tile int8_tile = Int8Tile::chosen,
                     Output to = Output::fresh);

}  // namespace toptag
