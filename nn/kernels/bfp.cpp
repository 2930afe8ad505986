#include "nn/kernels/bfp.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include <limits>

#include "nn/check.h"
#include "nn/kernels/tile_driver.h"
#include "nn/profile.h"

namespace toptag {

namespace {

// The widest mantissa whose magnitude fits the kernels' bytes, and whose pair products x86's
// VPMADDUBSW sums without saturating: 2 * 127 * 127 = 32258 < 2^15.
constexpr int kMaxMantissaBits = 7;
constexpr int kGroup = 4;  // input channels per byte group of the packed operands

int64_t largest_mantissa(const BlockFormat& f) {
  return (int64_t{1} << f.mantissa_bits) - 1;
}

// The step 2^(e + 1 - M) of a block whose largest magnitude is `max`, and its reciprocal, as the
// emulation computes them (quantize/format.cpp quantize_bfp): e = floor(log2 max) clamped to the
// exponent range, the smallest exponent for an all-zero block and the largest for an inf.
struct BlockStep {
  double step, inverse;
};
BlockStep block_step(float max, const BlockFormat& f) {
  const int e = bfp_block_exponent(max, f.exponent_min, f.exponent_max);
  return {power_of_two(e + 1 - f.mantissa_bits), power_of_two(f.mantissa_bits - 1 - e)};
}

}  // namespace

double power_of_two(int k) {
  return std::bit_cast<double>(static_cast<uint64_t>(k + 1023) << 52);
}

int bfp_block_exponent(float max, int lo, int hi) {
  if (std::isinf(max)) return hi;
  if (!(max > 0)) return lo;
  // floor(log2 max) is the biased exponent field less 127 for a normal float. A subnormal's field
  // gives -127, above its true log2 but still at most lo (lo >= -127 for E <= 8), as both are.
  const int log2 = static_cast<int>(std::bit_cast<uint32_t>(max) >> 23 & 0xff) - 127;
  return std::clamp(log2, lo, hi);
}

bool bfp_kernels_apply(const BlockFormat& weights, const BlockFormat& inputs) {
  return weights.block == inputs.block && weights.block % kGroup == 0 && weights.mantissa_bits <= kMaxMantissaBits &&
         inputs.mantissa_bits <= kMaxMantissaBits;
}

namespace {

// One block of n channels: its step, and its mantissas as bytes (the kernel set's vector loops).
// Flags NaN (the step is then NaN) and negative values (impossible after a ReLU).
void quantize_block(const KernelSet& ks, const float* in, int64_t n, const BlockFormat& f, float* step, uint8_t* m,
                    bool& negative) {
  const BlockStep s = block_step(ks.bfp_block_max(in, n), f);
  const float top = static_cast<float>(largest_mantissa(f));
  bool nan = false;
  if (s.inverse < std::numeric_limits<float>::min() || s.inverse > std::numeric_limits<float>::max()) {
    // A reciprocal step beyond float's normal range (E = 8 formats at the ends of the exponent range):
    // in double, as the emulation.
    for (int64_t c = 0; c < n; ++c) {
      const double r = std::nearbyint(static_cast<double>(in[c]) * s.inverse);
      nan = nan || in[c] != in[c];
      negative = negative || in[c] < 0;
      m[c] = static_cast<uint8_t>(static_cast<int32_t>(r < top ? r : top));
    }
  } else {
    // x * 2^k is exact in float here, and its rounding is the emulation's (done there in double).
    const int seen = ks.bfp_block_bytes(in, n, static_cast<float>(s.inverse), top, m);
    nan = (seen & kBlockSawNan) != 0;
    negative = negative || (seen & kBlockSawNegative) != 0;
  }
  *step = nan ? std::numeric_limits<float>::quiet_NaN() : static_cast<float>(s.step);
}

// Room for `pixels` records of `blocks` steps and `channels` values of value_bytes (uninitialised).
BfpActivations empty_records(int64_t pixels, int64_t channels, int64_t blocks, int64_t value_bytes = 1) {
  BfpActivations a;
  a.pixels = pixels;
  a.channels = channels;
  a.groups = (channels + kGroup - 1) / kGroup;
  a.blocks = blocks;
  a.value_bytes = value_bytes;
  a.storage = Tensor::empty({pixels * a.record_floats()});
  return a;
}

}  // namespace

BfpActivations quantize_bfp_activations(const float* x, int64_t pixels, int64_t channels, const BlockFormat& f,
                                        Isa isa) {
  const KernelSet& ks = kernels(isa);
  BfpActivations a = empty_records(pixels, channels, (channels + f.block - 1) / f.block);
  const int64_t padding = a.groups * kGroup - channels;
  bool negative = false;
#pragma omp parallel for schedule(static) reduction(|| : negative) if (pixels * channels > (1 << 16))
  for (int64_t p = 0; p < pixels; ++p) {
    const float* in = x + p * channels;
    float* steps = a.storage.data() + p * a.record_floats();
    uint8_t* m = reinterpret_cast<uint8_t*>(steps + a.blocks);
    for (int64_t b = 0; b < a.blocks; ++b) {
      const int64_t c0 = b * f.block, n = std::min<int64_t>(channels - c0, f.block);
      quantize_block(ks, in + c0, n, f, steps + b, m + c0, negative);
    }
    for (int64_t c = 0; c < padding; ++c) m[channels + c] = 0;
  }
  if (negative) fail("block floating point kernels: a layer input is negative, but it follows a ReLU");
  return a;
}

bool fake_quantize_bfp_exact_in_float(const BlockFormat& f) {
  // Every step 2^(e + 1 - M) and reciprocal 2^(M - 1 - e), e in [exponent_min, exponent_max], is a
  // normal float: powers of two from 2^-126 to 2^127.
  auto normal = [](int k) { return k >= -126 && k <= 127; };
  return normal(f.exponent_min + 1 - f.mantissa_bits) && normal(f.exponent_max + 1 - f.mantissa_bits) &&
         normal(f.mantissa_bits - 1 - f.exponent_min) && normal(f.mantissa_bits - 1 - f.exponent_max);
}

void fake_quantize_bfp(const float* x, int64_t pixels, int64_t channels, const BlockFormat& f, float* y) {
  if (!fake_quantize_bfp_exact_in_float(f)) fail("fake_quantize_bfp: steps of this format are not normal floats");
  const float top = static_cast<float>(largest_mantissa(f));
#pragma omp parallel for schedule(static) if (pixels * channels > (1 << 16))
  for (int64_t p = 0; p < pixels; ++p)
    for (int64_t c0 = 0; c0 < channels; c0 += f.block) {
      const float* in = x + p * channels + c0;
      float* out = y + p * channels + c0;
      const int64_t n = std::min<int64_t>(f.block, channels - c0);
      float max = 0;
      for (int64_t c = 0; c < n; ++c) max = std::max(max, std::fabs(in[c]));  // NaN skipped
      const BlockStep s = block_step(max, f);
      const float step = static_cast<float>(s.step), inverse = static_cast<float>(s.inverse);
      for (int64_t c = 0; c < n; ++c) {
        // |x| / step = |x| * inverse exactly (or below 0.5, rounding to 0, where it leaves the normals).
        const float v = in[c], magnitude = std::min(std::nearbyint(std::fabs(v) * inverse), top);
        out[c] = v != v ? v : std::copysign(magnitude * step, v);  // a NaN stays NaN
      }
    }
}

namespace kernels_ref {

// int8's quantizer (tile.h KernelSet::int8_bytes) on SSE2 (every x86-64 CPU), 8 values at a time,
// or in plain C++, x / scale in float as the emulation computes it.
bool int8_bytes(const float* in, int64_t n, float scale, int zero_point, uint8_t flip, uint8_t* m) {
  // Beyond +-512 every value saturates: clamping first keeps the conversion to int32 in range.
  constexpr float kLimit = 512;
  bool nan = false;
  int64_t c = 0;
#ifdef __SSE2__
  const __m128 s = _mm_set1_ps(scale), lo = _mm_set1_ps(-kLimit), hi = _mm_set1_ps(kLimit);
  const __m128i zp = _mm_set1_epi32(zero_point);
  __m128 nans = _mm_setzero_ps();
  for (; c + 8 <= n; c += 8) {
    const __m128 x0 = _mm_loadu_ps(in + c), x1 = _mm_loadu_ps(in + c + 4);
    nans = _mm_or_ps(nans, _mm_or_ps(_mm_cmpunord_ps(x0, x0), _mm_cmpunord_ps(x1, x1)));
    const __m128i i0 = _mm_add_epi32(_mm_cvtps_epi32(_mm_max_ps(_mm_min_ps(_mm_div_ps(x0, s), hi), lo)), zp);
    const __m128i i1 = _mm_add_epi32(_mm_cvtps_epi32(_mm_max_ps(_mm_min_ps(_mm_div_ps(x1, s), hi), lo)), zp);
    const __m128i words = _mm_packs_epi32(i0, i1);         // int16, no saturation
    const __m128i bytes = _mm_packus_epi16(words, words);  // clamps to 0..255
    _mm_storel_epi64(reinterpret_cast<__m128i*>(m + c), _mm_xor_si128(bytes, _mm_set1_epi8(static_cast<char>(flip))));
  }
  nan = _mm_movemask_ps(nans) != 0;
#endif
  for (; c < n; ++c) {
    const float y = in[c] / scale;
    nan = nan || y != y;
    const float r = std::nearbyint(std::clamp(y, -kLimit, kLimit)) + static_cast<float>(zero_point);
    m[c] = static_cast<uint8_t>(r != r ? 0 : std::clamp(r, 0.0f, 255.0f)) ^ flip;
  }
  return nan;
}

// The words (KernelSet::int8_words): the bytes, a stretch at a time, less the zero point.
bool int8_words(const float* in, int64_t n, float scale, int zero_point, int16_t* w) {
  constexpr int64_t kStretch = 256;
  bool nan = false;
  for (int64_t c0 = 0; c0 < n; c0 += kStretch) {
    uint8_t bytes[kStretch];
    const int64_t count = std::min(kStretch, n - c0);
    nan = int8_bytes(in + c0, count, scale, zero_point, 0, bytes) || nan;
    int64_t c = 0;
#ifdef __SSE2__
    const __m128i zp = _mm_set1_epi16(static_cast<int16_t>(zero_point)), zero = _mm_setzero_si128();
    for (; c + 8 <= count; c += 8) {
      const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes + c));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(w + c0 + c), _mm_sub_epi16(_mm_unpacklo_epi8(b, zero), zp));
    }
#endif
    for (; c < count; ++c) w[c0 + c] = static_cast<int16_t>(bytes[c] - zero_point);
  }
  return nan;
}

}  // namespace kernels_ref

BfpActivations quantize_u8_activations(const float* x, int64_t pixels, int64_t channels, const AffineU8& q,
                                       const KernelSet& ks) {
  BfpActivations a = empty_records(pixels, channels, 1);
  const auto quantize = ks.int8_bytes;
  const uint8_t flip = ks.int8_signed_bytes ? 0x80 : 0;
  const int64_t padding = a.groups * kGroup - channels;
#pragma omp parallel for schedule(static) if (pixels * channels > (1 << 16))
  for (int64_t p = 0; p < pixels; ++p) {
    float* step = a.storage.data() + p * a.record_floats();
    uint8_t* m = reinterpret_cast<uint8_t*>(step + 1);
    const bool nan = quantize(x + p * channels, channels, q.scale, q.zero_point, flip, m);
    *step = nan ? std::numeric_limits<float>::quiet_NaN() : q.scale;
    for (int64_t c = 0; c < padding; ++c) m[channels + c] = flip;  // their weights are zero
  }
  return a;
}

BfpActivations quantize_u8_words(const float* x, int64_t pixels, int64_t channels, const AffineU8& q,
                                 const KernelSet& ks) {
  BfpActivations a = empty_records(pixels, channels, 1, 2);
  const auto quantize = ks.int8_words;
  const int64_t padded = a.groups * kGroup;
#pragma omp parallel for schedule(static) if (pixels * channels > (1 << 16))
  for (int64_t p = 0; p < pixels; ++p) {
    float* step = a.storage.data() + p * a.record_floats();
    int16_t* words = reinterpret_cast<int16_t*>(step + 1);
    const bool nan = quantize(x + p * channels, channels, q.scale, q.zero_point, words);
    *step = nan ? std::numeric_limits<float>::quiet_NaN() : q.scale;
    for (int64_t c = channels; c < padded; ++c) words[c] = 0;  // their weights are zero
  }
  return a;
}

void fake_quantize_u8(const float* x, int64_t n, const AffineU8& a, float* y) {
  constexpr int64_t kChunk = 4096;
  const float zero_point = static_cast<float>(a.zero_point);
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    uint8_t bytes[kChunk];
    const int64_t count = std::min(kChunk, n - c0);
    kernels_ref::int8_bytes(x + c0, count, a.scale, a.zero_point, 0, bytes);
    for (int64_t i = 0; i < count; ++i) {
      const float v = x[c0 + i];
      y[c0 + i] = v != v ? v : (static_cast<float>(bytes[i]) - zero_point) * a.scale;
    }
  }
}

PackedBfpConv pack_conv_bfp(const BfpWeight& w, const Tensor* bias, Conv2dParams params, const BlockFormat& input,
                            Isa isa) {
  if (!bfp_kernels_apply(w.format, input))
    fail(
        "pack_conv_bfp: the integer kernels need M <= {} and equal blocks of a multiple of {} (weights M={} B={}, "
        "inputs M={} B={})",
        kMaxMantissaBits, kGroup, w.format.mantissa_bits, w.format.block, input.mantissa_bits, input.block);
  PackedBfpConv cv;
  cv.K = w.K;
  cv.C = w.C;
  cv.R = w.R;
  cv.S = w.S;
  cv.stride = params.stride;
  cv.pad = params.padding;
  cv.kernels = &kernels(isa);
  cv.input = input;
  const int64_t nr = cv.kernels->nr, taps = cv.taps();
  cv.panels = (cv.K + nr - 1) / nr;
  cv.groups = (cv.C + kGroup - 1) / kGroup;
  cv.block_groups = input.block / kGroup;
  cv.blocks = (cv.C + input.block - 1) / input.block;
  if (static_cast<int64_t>(w.mantissas.size()) != cv.K * cv.C * taps ||
      static_cast<int64_t>(w.exponents.size()) != cv.K * cv.blocks * taps)
    fail("pack_conv_bfp: {} mantissas and {} exponents do not fit a ({}, {}, {}, {}) weight in blocks of {}",
         w.mantissas.size(), w.exponents.size(), cv.K, cv.C, cv.R, cv.S, input.block);
  if (bias) expect_shape(*bias, Shape{cv.K}, "pack_conv_bfp bias");
  cv.weights.assign(static_cast<size_t>(cv.panels * cv.panel_size()), 0);
  cv.steps.assign(static_cast<size_t>(cv.panels * cv.panel_steps()), 0.0f);
  cv.bias.assign(static_cast<size_t>(cv.panels * nr), 0.0f);
  const int32_t top = static_cast<int32_t>(largest_mantissa(w.format));
  for (int64_t k = 0; k < cv.K; ++k) {
    const int64_t panel = k / nr, j = k % nr;
    int8_t* packed = cv.weights.data() + panel * cv.panel_size();
    float* steps = cv.steps.data() + panel * cv.panel_steps();
    for (int64_t t = 0; t < taps; ++t) {
      for (int64_t c = 0; c < cv.C; ++c) {
        const int32_t m = w.mantissas[(k * cv.C + c) * taps + t];
        if (m < -top || m > top)
          fail("pack_conv_bfp: mantissa {} of output channel {} exceeds {} bits", m, k, w.format.mantissa_bits);
        packed[((t * cv.groups + c / kGroup) * nr + j) * kGroup + c % kGroup] = static_cast<int8_t>(m);
      }
      for (int64_t b = 0; b < cv.blocks; ++b) {
        const int e = w.exponents[(k * cv.blocks + b) * taps + t];
        steps[(t * cv.blocks + b) * nr + j] = std::ldexp(1.0f, e + 1 - w.format.mantissa_bits);
      }
    }
    if (bias) cv.bias[k] = bias->data()[k];
  }
  // Whether a whole block of VPMADDUBSW pair sums fits int16: each 16-bit lane sums B / 2 products.
  cv.int16_sums =
      input.block / 2 * largest_mantissa(input) * largest_mantissa(w.format) <= std::numeric_limits<int16_t>::max();
  cv.zero_record.assign(static_cast<size_t>(cv.blocks + cv.groups), 0.0f);
  return cv;
}

bool int8_tile_takes(const KernelSet& ks, std::span<const int32_t> weights) {
  if (!ks.tile_bfp_full_bytes) return false;
  return !ks.int8_signed_bytes || std::find(weights.begin(), weights.end(), -128) == weights.end();
}

PackedBfpConv pack_conv_int8(int64_t K, int64_t C, int64_t R, int64_t S, std::span<const int32_t> weights,
                             std::span<const float> scales, const Tensor* bias, Conv2dParams params,
                             const AffineU8& input, const KernelSet& ks) {
  PackedBfpConv cv;
  cv.K = K;
  cv.C = C;
  cv.R = R;
  cv.S = S;
  cv.stride = params.stride;
  cv.pad = params.padding;
  cv.kernels = &ks;
  if (!cv.kernels->tile_bfp_full_bytes)
    fail("pack_conv_int8: the {} tile cannot take activation bytes above 127", cv.kernels->bfp_name);
  const int byte_offset = cv.kernels->int8_signed_bytes ? 128 : 0;  // the tile sums (q - 128) w
  if (input.zero_point < 0 || input.zero_point > 255)
    fail("pack_conv_int8: zero point {} is not a byte", input.zero_point);
  cv.int8_input = input;
  const int64_t nr = cv.kernels->nr, taps = cv.taps();
  if (nr > kMaxNr) fail("pack_conv_int8: the {} tile's panels are wider than {}", cv.kernels->bfp_name, kMaxNr);
  cv.panels = (K + nr - 1) / nr;
  cv.groups = (C + kGroup - 1) / kGroup;
  cv.block_groups = cv.groups;  // one block: a tap's whole reduction is one exact int32 sum
  cv.blocks = 1;
  if (static_cast<int64_t>(weights.size()) != K * C * taps || static_cast<int64_t>(scales.size()) != K)
    fail("pack_conv_int8: {} weights and {} scales do not fit a ({}, {}, {}, {}) weight", weights.size(), scales.size(),
         K, C, R, S);
  if (bias) expect_shape(*bias, Shape{K}, "pack_conv_int8 bias");
  cv.weights.assign(static_cast<size_t>(cv.panels * cv.panel_size()), 0);
  cv.steps.assign(static_cast<size_t>(cv.panels * cv.panel_steps()), 0.0f);
  cv.bias.assign(static_cast<size_t>(cv.panels * nr), 0.0f);
  cv.offsets.assign(static_cast<size_t>(cv.panels * taps * nr), 0);
  cv.offset_totals.assign(static_cast<size_t>(cv.panels * nr), 0);
  for (int64_t k = 0; k < K; ++k) {
    const int64_t panel = k / nr, j = k % nr;
    int8_t* packed = cv.weights.data() + panel * cv.panel_size();
    float* steps = cv.steps.data() + panel * cv.panel_steps();
    int64_t magnitude = 0, total = 0;  // of |w|, and of the zero point's shares
    for (int64_t t = 0; t < taps; ++t) {
      int64_t sum = 0;  // of the tap's weights
      for (int64_t c = 0; c < C; ++c) {
        const int32_t w = weights[(k * C + c) * taps + t];
        if (w < -128 || w > 127) fail("pack_conv_int8: weight {} of output channel {} is not a signed byte", w, k);
        if (w == -128 && byte_offset != 0)
          fail("pack_conv_int8: the {} tile takes weights in [-127, 127], output channel {} has -128",
               cv.kernels->bfp_name, k);
        packed[((t * cv.groups + c / kGroup) * nr + j) * kGroup + c % kGroup] = static_cast<int8_t>(w);
        sum += w;
        magnitude += std::abs(w);
      }
      steps[t * nr + j] = scales[k];
      // The zero point's share at this tap. A tap in the padding reads the zero point's byte, so the
      // driver, when it skips such taps (pixel by pixel, tile_driver.h), sums only the shares of the
      // taps it passes (sum_tap_offsets).
      const int64_t share = (input.zero_point - byte_offset) * sum;
      cv.offsets[(panel * taps + t) * nr + j] = static_cast<int32_t>(share);
      total += share;
    }
    // sum over c, t of (q - zp) w = (sum q w) - zp (sum w), all in int32: |sum q w| <= 255 sum |w|.
    if (255 * magnitude > std::numeric_limits<int32_t>::max())
      fail("pack_conv_int8: output channel {} could overflow an int32 sum ({} weights)", k, C * taps);
    cv.offset_totals[panel * nr + j] = static_cast<int32_t>(total);
    if (bias) cv.bias[panel * nr + j] = bias->data()[k];
  }
  // A pixel in the padding stands for 0: the zero point's byte, at the activation step (as the
  // quantizer stores it: quantize_u8_activations).
  cv.zero_record.assign(static_cast<size_t>(1 + cv.groups), 0.0f);
  cv.zero_record[0] = input.scale;
  uint8_t* zero_bytes = reinterpret_cast<uint8_t*>(cv.zero_record.data() + 1);
  for (int64_t c = 0; c < C; ++c) zero_bytes[c] = static_cast<uint8_t>(input.zero_point ^ byte_offset);
  if (ks.tile_int8_words) cv.words = std::make_shared<const PackedOnFirstUse<Int8Words>>();
  return cv;
}

// The word tile's copy of an int8 layer's packed bytes: [tap][group][nr][4] -> [tap][pair][nr][2].
Int8Words pack_int8_words(const PackedBfpConv& cv) {
  const int64_t nr = cv.kernels->nr, steps = cv.panels * cv.taps() * cv.groups;
  Int8Words words;
  words.weights.resize(cv.weights.size());
  for (int64_t s = 0; s < steps; ++s) {  // one group of one tap of one panel
    const int8_t* in = cv.weights.data() + s * nr * kGroup;
    int16_t* out = words.weights.data() + s * nr * kGroup;
    for (int64_t j = 0; j < nr; ++j)
      for (int64_t c = 0; c < kGroup; ++c) out[((c / 2) * nr + j) * 2 + c % 2] = in[j * kGroup + c];
  }
  words.zero_record.assign(static_cast<size_t>(1 + 2 * cv.groups), 0.0f);
  words.zero_record[0] = cv.int8_input->scale;
  return words;
}

int64_t toptag_packed_bytes(const Int8Words& words) {
  return static_cast<int64_t>(words.weights.size() * sizeof(int16_t) + words.zero_record.size() * sizeof(float));
}

bool int8_words_pay(const PackedBfpConv& cv, int64_t rows) {
  // bench_conv on Zen 3 (BM_Int8Conv tile:1 against tile:2, fastest of 15-30 runs): the word tile
  // took 0.77-0.98 of the byte tile's time at batch 64 and 0.40-0.97 on the 224x224x3 layers (49 rows
  // and up), the same within the noise (0.82-1.20) on 40x40's 25-row layers at batch 1, and 0.91-1.55
  // on layers of 1-4 rows, where a panel's weights are read for one tile and the byte tile's
  // half-size weights win.
  constexpr int64_t kMinRows = 48;
  return cv.words && rows >= kMinRows;
}

bool int8_runs_on_words(const PackedBfpConv& cv, int64_t rows, Int8Tile tile) {
  return cv.int8_input && cv.words &&
         (tile == Int8Tile::words || (tile == Int8Tile::chosen && int8_words_pay(cv, rows)));
}

// A layer's weights this small stay in L1 while a tile's rows pass over all its panels: half of a
// 32 KB L1 (AMD Zen 3's), which ResNet-50's 64 <-> 256 channel 1x1 layers fill exactly.
constexpr int64_t kRowsOuterMaxWeightBytes = 16 << 10;

bool bfp_rows_outer(int64_t weight_bytes, int64_t rows) {
  // Enough chunks of rows for every thread to get several, since the panels are no longer split.
  return weight_bytes <= kRowsOuterMaxWeightBytes && rows >= 4 * kChunkRows * num_threads();
}

// int8, a pixel whose taps in the padding are skipped: out[j] = the zero point's share of panel
// column j over the `inside` taps it reads (tap_index), for BfpTileArgs::offsets.
static void sum_tap_offsets(const PackedBfpConv& cv, int64_t panel, int inside, const int* tap_index, int32_t* out) {
  const int64_t nr = cv.kernels->nr;
  const int32_t* panel_offsets = cv.offsets.data() + panel * cv.taps() * nr;
  std::fill(out, out + nr, 0);
  for (int t = 0; t < inside; ++t)
    for (int64_t j = 0; j < nr; ++j) out[j] += panel_offsets[tap_index[t] * nr + j];
}

Tensor conv_nhwc_bfp(const PackedBfpConv& cv, const Tensor& x, const Tensor* residual, bool relu,
                     QuantizedInputCache* cache, Int8Tile int8_tile, Output to) {
  const OutputGrid g = output_grid(cv, x, "conv_nhwc_bfp");
  Tensor y = output_tensor({g.N, g.P, g.Q, cv.K}, x, residual, to, "conv_nhwc_bfp");
  if (y.numel() == 0) return y;  // an empty batch
  ProfileScope profile("conv nhwc bfp");
  const bool words = int8_runs_on_words(cv, g.rows(), int8_tile);
  const Int8Words* word_panels = words ? &cv.words->get([&] { return pack_int8_words(cv); }) : nullptr;
  const bool cached = cache && !cv.int8_input && cache->source.data() == x.data() &&
                      cache->source.shape() == x.shape() && cache->format == cv.input;
  BfpActivations own;
  if (!cached) {
    ProfileScope quantize("input quantize");
    const int64_t pixels = g.N * g.H * g.W;
    if (words)
      own = quantize_u8_words(x.data(), pixels, cv.C, *cv.int8_input, *cv.kernels);
    else if (cv.int8_input)
      own = quantize_u8_activations(x.data(), pixels, cv.C, *cv.int8_input, *cv.kernels);
    else
      own = quantize_bfp_activations(x.data(), pixels, cv.C, cv.input, cv.kernels->isa);
  }
  const BfpActivations& a = cached ? cache->records : own;
  const KernelSet& ks = *cv.kernels;
  const auto run_tile = words ? ks.tile_int8_words : ks.tile_bfp;
  const PixelTable px{reinterpret_cast<const char*>(a.storage.data()),
                      a.record_floats() * static_cast<int64_t>(sizeof(float)),
                      words ? word_panels->zero_record.data() : cv.zero_record.data()};
  const void* weights = words ? static_cast<const void*>(word_panels->weights.data()) : cv.weights.data();
  const int64_t panel_bytes = cv.panel_size() * (words ? 2 : 1);
  const int64_t steps_per_tap = cv.groups * (words ? 2 : 1);  // the tile's reduction steps (PanelPrefetch)
  // A panel's tile arguments; each tile then sets its rows (rows_at).
  auto panel_args = [&](int64_t panel) {
    const int64_t k0 = panel * ks.nr;
    BfpTileArgs t;
    t.taps = static_cast<int>(cv.taps());
    t.groups = cv.groups;
    t.block_groups = cv.block_groups;
    t.blocks = cv.blocks;
    t.panel = cv.weights.data() + panel * cv.panel_size();
    t.steps = cv.steps.data() + panel * cv.panel_steps();
    t.ld_out = cv.K;
    t.col_count = static_cast<int>(std::min<int64_t>(ks.nr, cv.K - k0));
    t.stage.bias = cv.bias.data() + k0;
    t.stage.relu = relu;
    t.stage.ld_residual = cv.K;
    t.int16_sums = cv.int16_sums;
    t.whole_reduction = cv.int8_input.has_value();
    t.offsets = cv.offset_totals.empty() || words ? nullptr : cv.offset_totals.data() + panel * ks.nr;
    if (words) t.word_panel = word_panels->weights.data() + panel * cv.panel_size();
    return t;
  };
  // Rows [i0, i0 + bfp_mr) of a chunk of `count` rows from output row m0, in panel k0's columns.
  auto rows_at = [&](BfpTileArgs& t, const void** rows, int64_t m0, int64_t count, int64_t i0, int64_t k0) {
    const int64_t m = m0 + i0;
    t.rows = rows + i0 * cv.taps();
    t.row_count = static_cast<int>(std::min<int64_t>(ks.bfp_mr, count - i0));
    t.out = y.data() + m * cv.K + k0;
    t.stage.residual = residual ? residual->data() + m * cv.K + k0 : nullptr;
  };
  const float* residual_data = residual ? residual->data() : nullptr;
  if ((cv.int8_input || ks.bfp_tap_index) && pixel_major(cv, g)) {
    // Pixel by pixel, the taps in the padding skipped (tile_driver.h): int8's whole reduction on every
    // tile, block floating point on the tiles with tap_index.
    const int64_t PQ = g.P * g.Q;
    for_each_pixel_tile(
        cv, g, px, ks.bfp_mr, cv.panels,
        [&](const void** rows, int inside, const int* tap_index, int64_t n0, int64_t count, int64_t pixel,
            int64_t panel, int64_t tile, int64_t tiles) {
          const int64_t first = (n0 * PQ + pixel) * cv.K + panel * ks.nr;
          BfpTileArgs t = panel_args(panel);
          t.rows = rows;
          t.row_count = static_cast<int>(count);
          t.taps = inside;
          t.tap_index = tap_index;
          // int8: the zero point's share of the taps read only.
          alignas(64) int32_t offsets[kMaxNr];
          if (t.offsets && inside < cv.taps()) {
            sum_tap_offsets(cv, panel, inside, tap_index, offsets);
            t.offsets = offsets;
          }
          t.out = y.data() + first;
          t.ld_out = PQ * cv.K;
          t.stage.residual = residual ? residual->data() + first : nullptr;
          t.stage.ld_residual = PQ * cv.K;
          t.prefetch = next_panel(weights, panel_bytes, panel, cv.panels, tiles, 1).slice(tile, inside * steps_per_tap);
          run_tile(t);
        });
  } else if (bfp_rows_outer(static_cast<int64_t>(cv.weights.size()), g.rows())) {
    // Small weights: every panel of a tile's rows before the next rows, so that the rows' outputs
    // and residuals are read and written in order, whole lines at a time.
    for_each_tile_chunk(cv, g, px, ks.bfp_mr, 1, [&](int64_t) {
      return [&](const void** rows, int64_t m0, int64_t count, int64_t, bool) {
        for (int64_t i0 = 0; i0 < count; i0 += ks.bfp_mr) {
          prefetch_output_ahead(y.data(), residual_data, cv.K, m0, count, i0, ks.bfp_mr, 0, cv.K);
          for (int64_t panel = 0; panel < cv.panels; ++panel) {
            BfpTileArgs t = panel_args(panel);
            rows_at(t, rows, m0, count, i0, panel * ks.nr);
            run_tile(t);
          }
        }
      };
    });
  } else {
    for_each_tile_chunk(cv, g, px, ks.bfp_mr, cv.panels, [&](int64_t) {
      return [&](const void** rows, int64_t m0, int64_t count, int64_t panel, bool) {
        BfpTileArgs t = panel_args(panel);
        const NextPanel next = next_panel(weights, panel_bytes, panel, cv.panels, count, ks.bfp_mr);
        for (int64_t i0 = 0; i0 < count; i0 += ks.bfp_mr) {
          t.prefetch = next.slice(i0 / ks.bfp_mr, cv.taps() * steps_per_tap);
          prefetch_output_ahead(y.data(), residual_data, cv.K, m0, count, i0, ks.bfp_mr, panel * ks.nr, ks.nr);
          rows_at(t, rows, m0, count, i0, panel * ks.nr);
          run_tile(t);
        }
      };
    });
  }
  if (cache && !cached && !cv.int8_input) *cache = QuantizedInputCache{x, cv.input, std::move(own)};
  return y;
}

namespace kernels_ref {

// The quantizer's loops on SSE2 (every x86-64 CPU), 8 values at a time, or in plain C++.
float bfp_block_max(const float* in, int64_t n) {
  float max = 0;
  int64_t c = 0;
#ifdef __SSE2__
  // MAXPS(x, m) gives its second operand when either is NaN: NaNs are skipped.
  __m128 m0 = _mm_setzero_ps(), m1 = _mm_setzero_ps();
  for (; c + 8 <= n; c += 8) {
    m0 = _mm_max_ps(_mm_loadu_ps(in + c), m0);
    m1 = _mm_max_ps(_mm_loadu_ps(in + c + 4), m1);
  }
  alignas(16) float lanes[4];
  _mm_store_ps(lanes, _mm_max_ps(m0, m1));
  for (float v : lanes) max = std::max(max, v);
#endif
  for (; c < n; ++c) max = std::max(max, in[c]);
  return max;
}

int bfp_block_bytes(const float* in, int64_t n, float inverse, float top, uint8_t* m) {
  bool nan = false, negative = false;
  int64_t c = 0;
#ifdef __SSE2__
  // CVTPS2DQ rounds half to even (the default rounding mode), and two packs turn the int32s into
  // bytes (values in [0, top <= 127]: no saturation).
  const __m128 inv = _mm_set1_ps(inverse), upper = _mm_set1_ps(top), zero = _mm_setzero_ps();
  __m128 nans = zero, negatives = zero;
  for (; c + 8 <= n; c += 8) {
    const __m128 x0 = _mm_loadu_ps(in + c), x1 = _mm_loadu_ps(in + c + 4);
    nans = _mm_or_ps(nans, _mm_or_ps(_mm_cmpunord_ps(x0, x0), _mm_cmpunord_ps(x1, x1)));
    negatives = _mm_or_ps(negatives, _mm_or_ps(_mm_cmplt_ps(x0, zero), _mm_cmplt_ps(x1, zero)));
    // MINPS gives its second operand for a NaN: the top (the step is NaN anyway).
    const __m128i i0 = _mm_cvtps_epi32(_mm_max_ps(_mm_min_ps(_mm_mul_ps(x0, inv), upper), zero));
    const __m128i i1 = _mm_cvtps_epi32(_mm_max_ps(_mm_min_ps(_mm_mul_ps(x1, inv), upper), zero));
    const __m128i words = _mm_packs_epi32(i0, i1);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(m + c), _mm_packus_epi16(words, words));
  }
  nan = _mm_movemask_ps(nans) != 0;
  negative = _mm_movemask_ps(negatives) != 0;
#endif
  for (; c < n; ++c) {
    const float x = in[c], y = x * inverse;
    nan = nan || x != x;
    negative = negative || x < 0;
    // round_half_even(min(y, top)), NaN: top; a negative value (refused by the caller) gives 0.
    m[c] = static_cast<uint8_t>(static_cast<int32_t>(std::nearbyint(std::max(y < top ? y : top, 0.0f))));
  }
  return (nan ? kBlockSawNan : 0) | (negative ? kBlockSawNegative : 0);
}

// The reference tile: the same order of operations as the SIMD tiles, in plain loops.
// int8 (BfpTileArgs::whole_reduction): one int32 sum per output over the taps read and every channel.
void tile_whole_reduction(const BfpTileArgs& t, float (&sums)[kMr][kNr]) {
  for (int i = 0; i < t.row_count; ++i) {
    int32_t sum[kNr] = {};
    for (int tap = 0; tap < t.taps; ++tap) {
      const int8_t* w = t.panel + panel_tap(t, tap) * t.groups * kNr * kGroup;
      const uint8_t* a = static_cast<const uint8_t*>(t.rows[i * t.taps + tap]) + sizeof(float);  // after the step
      for (int j = 0; j < kNr; ++j)
        for (int64_t g = 0; g < t.groups; ++g)
          for (int l = 0; l < kGroup; ++l) sum[j] += a[g * kGroup + l] * w[(g * kNr + j) * kGroup + l];
    }
    for (int j = 0; j < kNr && t.offsets; ++j) sum[j] -= t.offsets[j];
    const float astep = int8_row_step(t, i);
    for (int j = 0; j < kNr; ++j) sums[i][j] = static_cast<float>(sum[j]) * (t.steps[j] * astep);
  }
}

void tile_bfp(const BfpTileArgs& t) {
  float sums[kMr][kNr] = {};
  if (t.whole_reduction) tile_whole_reduction(t, sums);
  for (int tap = 0; tap < (t.whole_reduction ? 0 : t.taps); ++tap) {
    const int weight_tap = panel_tap(t, tap);
    const int8_t* w = t.panel + weight_tap * t.groups * kNr * kGroup;
    const float* wstep = t.steps + weight_tap * t.blocks * kNr;
    for (int i = 0; i < t.row_count; ++i) {
      const float* astep = static_cast<const float*>(t.rows[i * t.taps + tap]);
      const uint8_t* a = reinterpret_cast<const uint8_t*>(astep + t.blocks);
      for (int64_t b = 0; b < t.blocks; ++b) {
        const int64_t g0 = b * t.block_groups, g1 = std::min(t.groups, g0 + t.block_groups);
        for (int j = 0; j < kNr; ++j) {
          int32_t sum = 0;
          for (int64_t g = g0; g < g1; ++g)
            for (int l = 0; l < kGroup; ++l) sum += a[g * kGroup + l] * w[(g * kNr + j) * kGroup + l];
          sums[i][j] += static_cast<float>(sum) * (wstep[b * kNr + j] * astep[b]);
        }
      }
    }
  }
  const OutputStage& st = t.stage;
  for (int i = 0; i < t.row_count; ++i)
    for (int j = 0; j < t.col_count; ++j) {
      float v = sums[i][j];
      if (st.scale) v *= st.scale[j];
      if (st.bias) v += st.bias[j];
      if (st.residual) v += st.residual[i * st.ld_residual + j];
      if (st.relu && v < 0.0f) v = 0.0f;
      t.out[i * t.ld_out + j] = v;
    }
}

}  // namespace kernels_ref

}  // namespace toptag
