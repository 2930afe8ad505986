// The number formats of FPGA inference, each with a plain scalar reference implementation (the
// `_ref` functions, the definition tested by hand) and a tensor quantizer used in the forward pass.
//
// fixed<W,I[,ROUND[,OVERFLOW]]>, ufixed<W,I[,ROUND[,OVERFLOW]]>  Vivado HLS ap_fixed / ap_ufixed, as
//     Xilinx UG902 ("Arbitrary Precision Fixed-Point Data Types") defines them and hls4ml writes them:
//     W bits, I integer bits (including the sign for fixed; I may exceed W or be negative), LSB 2^(I-W);
//     signed range [-2^(I-1), 2^(I-1) - LSB], unsigned [0, 2^I - LSB]. The stored integer is value / LSB
//     (the W-bit two's complement or unsigned word read as an integer). Rounding of the bits below the
//     LSB: TRN (toward -inf, the default), TRN_ZERO (toward 0), RND (half toward +inf), RND_ZERO (half
//     toward 0), RND_MIN_INF (half toward -inf), RND_INF (half away from 0), RND_CONV (half to even).
//     Overflow, after rounding: WRAP (keep the low W bits, the default), SAT (clamp), SAT_ZERO (0),
//     SAT_SYM (signed: clamp to [-max, max], so -2^(I-1) itself becomes -max; unsigned: as SAT).
//     Also spelled the hls4ml way: ap_fixed<16,6,AP_RND,AP_SAT>, ap_ufixed<8,3>, ap_int<W> (=
//     fixed<W,W>), ap_uint<W> (= ufixed<W,W>); a fifth argument N (saturation bits) may only be 0.
//     hls4ml's default is fixed<16,6>.
// bfp<E,M,B>  block floating point: B consecutive values along the reduction (input-channel) axis
//     share one E-bit exponent e = floor(log2(max |x|)) of the block, clamped to [-(2^(E-1)-1),
//     2^(E-1)-1]; each value keeps a sign and an M-bit magnitude m = round_half_even(|x| / 2^(e+1-M)),
//     saturating at 2^M - 1. Presets: ms-fp8 = bfp<5,2,128> (Brainwave), ms-fp9 = bfp<5,3,128>,
//     msfp12 = bfp<8,3,16>, msfp16 = bfp<8,7,16>, mxint8 = bfp<8,7,32> (OCP MX: an 8-bit shared scale
//     and int8 elements, here symmetric in [-127, 127]).
// int8  weights: symmetric per output channel, scale = max |w| / 127 (at least the smallest normal
//     float, so that w / scale stays finite), q in [-127, 127] (PyTorch's per-channel symmetric
//     scheme on the restricted range, which makes it idempotent);
//     activations: per tensor, affine uint8 on all of 0..255: scale = (max - min) / 255 and zero point
//     round(-min / scale) over the [min, max] observed in calibration, widened to include 0, then
//     fixed. (A min/max observer like PyTorch's MinMaxObserver, whose default activation setting
//     keeps only 0..127, reduce_range.)
// Products are accumulated in float32 (the emulation quantizes the operands, not the sums).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "nn/kernels/bfp.h"
#include "nn/tensor.h"

namespace toptag {

enum class Rounding { trn, trn_zero, rnd, rnd_zero, rnd_min_inf, rnd_inf, rnd_conv };
enum class Overflow { wrap, sat, sat_zero, sat_sym };
enum class FormatKind { fixed, bfp, int8 };

struct Format {
  FormatKind kind = FormatKind::fixed;
  int width = 16, integer = 6;                            // fixed
  bool is_signed = true;                                  // fixed: false for ufixed
  Rounding rounding = Rounding::trn;                      // fixed
  Overflow overflow = Overflow::wrap;                     // fixed
  int exponent_bits = 5, mantissa_bits = 2, block = 128;  // bfp

  // "fixed<16,6>", "fixed<8,3,RND_CONV,SAT>", "ap_ufixed<8,3,AP_RND,AP_SAT>", "ap_int<8>",
  // "bfp<5,2,128>", a preset name, or "int8"; case-insensitive.
  static Format parse(const std::string& spec);
  std::string str() const;  // canonical spec
};

// ---- scalar references ----------------------------------------------------------------------
// The fixed-point integer (value / LSB) of x, and the value it stands for. NaN gives 0 (the tensor
// quantizer passes NaN through). +-inf overflows: SAT and SAT_SYM clamp it, SAT_ZERO gives 0, and
// WRAP, with no bits to wrap, saturates as SAT does.
int64_t fixed_integer_ref(double x, const Format& f);
double fixed_ref(double x, const Format& f);
double fixed_lsb(const Format& f);
// The least and greatest values a format can hold (fixed_min is -max under SAT_SYM, 0 if unsigned).
double fixed_min(const Format& f);
double fixed_max(const Format& f);

// One block: fills the signed magnitudes m (value = m * 2^(exponent + 1 - M)) and returns the exponent.
int bfp_block_ref(std::span<const double> x, const Format& f, std::span<int64_t> mantissas);
int bfp_exponent_min(const Format& f);
int bfp_exponent_max(const Format& f);
double bfp_max_magnitude(const Format& f);  // the largest representable |value|

// ---- tensors --------------------------------------------------------------------------------
// How a tensor is grouped: viewed as [outer, axis, inner], blocks run along `axis` (the input
// channels) for each (outer, inner); int8 weight channels are the `outer` index.
struct AxisLayout {
  int64_t outer = 1, axis = 1, inner = 1;
};
AxisLayout weight_layout(const Shape& w);      // conv (K,C,R,S) -> [K, C, R*S]; linear (O,I) -> [O, I, 1]
AxisLayout activation_layout(const Shape& x);  // conv input (N,C,H,W) -> [N, C, H*W]; linear input (N,I) -> [N, I, 1]

// Per-tensor affine parameters of an int8 activation quantizer.
struct AffineRange {
  float min = 0, max = 0;
  float scale() const;
  int zero_point() const;
};

// y = q(x); in_range[i] = 1 where x[i] is representable (masked STE), 0 where it saturates or wraps.
// `range` is required for int8 activations and ignored otherwise.
void quantize_tensor(const Format& f, bool is_weight, const Tensor& x, Tensor& y, Tensor* in_range,
                     const AffineRange* range = nullptr);

// The exact integer encoding of a quantized weight, for checkpoints and FPGA flows:
//   fixed: integers = value / LSB;  bfp: integers = signed magnitudes, exponents per block
//   ([outer, ceil(axis / B), inner]);  int8: integers = q, scales per output channel.
struct EncodedTensor {
  std::vector<int32_t> integers;
  std::vector<int8_t> exponents;
  std::vector<float> scales;
};
EncodedTensor encode_weight(const Format& f, const Tensor& w);
Tensor decode_weight(const Format& f, const EncodedTensor& e, const Shape& shape);

// A bfp format as the integer kernels see it (nn/kernels/bfp.h).
BlockFormat block_format(const Format& f);

}  // namespace toptag
