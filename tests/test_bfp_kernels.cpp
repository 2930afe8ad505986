// The block floating point kernels (nn/kernels/bfp.h) against the float emulation they replace
// (quantize/format.h): the activation quantizer must give exactly the emulation's mantissas and steps,
// and a convolution on the integer tiles the emulation's result, a float32 conv of the decoded
// operands, to float32 rounding of the sums. Every instruction set this CPU runs, AVX2's tile on
// AVX-512's 32-wide panels (what an AVX-512 CPU without VNNI runs), and the edges: all-zero blocks,
// the largest mantissas everywhere, the smallest and largest exponents, channel counts that are not a
// multiple of the block or of 4, batch 1 and 64, sparse jet-like images.
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "nn/kernels/bfp.h"
#include "nn/kernels/tile_driver.h"
#include "quantize/format.h"
#include "testing.h"

namespace toptag {
namespace {

// The emulation of a BFP activation: quantize_tensor over (pixels, C), blocks along C.
Tensor emulated(const Format& f, const Tensor& x) {
  const int64_t C = x.dim(x.rank() - 1);
  Tensor flat = x.reshape({x.numel() / C, C}), y = Tensor::empty(flat.shape());
  quantize_tensor(f, false, flat, y, nullptr);
  return y.reshape(x.shape());
}

// The values the kernels' records stand for: mantissa * step.
Tensor decoded(const BfpActivations& a, const Shape& shape, int block) {
  Tensor y = Tensor::empty(shape);
  for (int64_t p = 0; p < a.pixels; ++p)
    for (int64_t c = 0; c < a.channels; ++c)
      y.data()[p * a.channels + c] = static_cast<float>(a.mantissas(p)[c]) * a.steps(p)[c / block];
  return y;
}

// Non-negative (post-ReLU) activations: a fraction exactly zero, the rest spread over `decades`
// powers of ten around 1, so that blocks get different exponents.
Tensor activations(const Shape& shape, Rng& rng, double zeros = 0.3, double decades = 3) {
  Tensor x = Tensor::empty(shape);
  for (float& v : x.span())
    v = rng.uniform() < zeros ? 0.0f
                              : static_cast<float>(rng.uniform() * std::pow(10.0, decades * (rng.uniform() - 0.5)));
  return x;
}

// Every instruction set's quantizer loops (32 values at a time on AVX2 and AVX-512, then the rest)
// give the emulation's bytes: channel counts below, at and past the vector loop's 32, and blocks of
// 8 to 128.
TEST(BfpActivations, ExactlyTheEmulationsMantissasAndSteps) {
  Rng rng(3);
  for (Isa isa : testing::isas_here())
    for (const char* spec : {"ms-fp8", "ms-fp9", "msfp12", "msfp16", "mxint8", "bfp<4,3,8>"}) {
      SCOPED_TRACE(fmt::format("{} {}", isa_name(isa), spec));
      const Format f = Format::parse(spec);
      for (int64_t C : {1, 3, 4, 17, 31, 32, 33, 64, 130, 300}) {
        SCOPED_TRACE(C);
        Tensor x = activations({5, C}, rng, 0.3, 8);  // 8 decades: exponents clamp at both ends of E=4 and 5
        x.data()[0] = std::numeric_limits<float>::infinity();
        for (int64_t c = 0; c < C; ++c) x.data()[C + c] = 0.0f;  // an all-zero pixel
        // Quarters up to 3: with the block's step 1 (M = 2) or 1/2 (M = 3), many lie exactly halfway
        // between two mantissas, and round to even.
        for (int64_t c = 0; c < C; ++c) x.data()[2 * C + c] = 0.25f * static_cast<float>(c % 13);
        // Subnormal floats only: their exponent field reads -127, below their true log2.
        for (int64_t c = 0; c < C; ++c) x.data()[3 * C + c] = 1e-39f * static_cast<float>(c % 5);
        const BfpActivations a = quantize_bfp_activations(x.data(), 5, C, block_format(f), isa);
        const Tensor expected = emulated(f, x), got = decoded(a, x.shape(), f.block);
        for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(got.data()[i], expected.data()[i]) << "element " << i;
      }
    }
}

// A NaN anywhere in a block, in the vector loop or in the rest, gives the block a NaN step; a
// negative value anywhere is refused.
TEST(BfpActivations, NanPoisonsItsBlockAndNegativeInputsAreRefused) {
  for (Isa isa : testing::isas_here()) {
    SCOPED_TRACE(isa_name(isa));
    const BlockFormat small{2, 4, -15, 15};
    std::vector<float> x = {1, 2, NAN, 3, 1, 1, 1, 1};
    const BfpActivations a = quantize_bfp_activations(x.data(), 1, 8, small, isa);
    EXPECT_TRUE(std::isnan(a.steps(0)[0]));
    EXPECT_EQ(a.steps(0)[1], 0.5f);  // max 1: e = 0, step 2^(0 + 1 - 2)
    x[5] = -1;
    EXPECT_THROW(quantize_bfp_activations(x.data(), 1, 8, small, isa), Error);

    const BlockFormat wide{2, 128, -15, 15};
    for (int64_t at : {0, 31, 32, 127, 129}) {
      SCOPED_TRACE(at);
      std::vector<float> y(130, 1.0f);
      y[at] = NAN;
      const BfpActivations b = quantize_bfp_activations(y.data(), 1, 130, wide, isa);
      EXPECT_EQ(std::isnan(b.steps(0)[0]), at < 128);
      EXPECT_EQ(std::isnan(b.steps(0)[1]), at >= 128);
      y[at] = -1e-30f;
      EXPECT_THROW(quantize_bfp_activations(y.data(), 1, 130, wide, isa), Error);
    }
  }
}

// The float-arithmetic fake quantizer (the stem's signed image inputs) gives the emulation's values
// bit for bit, signed zeros included, for every format whose steps are normal floats; E = 8 formats
// with small mantissas are left to the emulation.
TEST(BfpFakeQuantize, BitForBitTheEmulation) {
  Rng rng(13);
  for (const char* spec : {"ms-fp8", "ms-fp9", "bfp<4,3,8>", "bfp<6,5,16>", "bfp<7,23,32>", "bfp<2,1,4>"}) {
    SCOPED_TRACE(spec);
    const Format f = Format::parse(spec);
    ASSERT_TRUE(fake_quantize_bfp_exact_in_float(block_format(f)));
    for (int64_t C : {1, 3, 4, 17, 130}) {
      SCOPED_TRACE(C);
      Tensor x = activations({6, C}, rng, 0.2, 10);
      for (int64_t i = 0; i < x.numel(); i += 2) x.data()[i] = -x.data()[i];  // signed, as images may be
      x.data()[0] = NAN;
      x.data()[C] = -std::numeric_limits<float>::infinity();
      for (int64_t c = 0; c < C; ++c) x.data()[2 * C + c] = c % 2 ? 1e-39f : -0.0f;  // subnormal and -0
      for (int64_t c = 0; c < C; ++c) x.data()[3 * C + c] = 0.25f * static_cast<float>(c % 9) - 1.0f;  // ties
      x.data()[4 * C] = -1e-30f;  // rounds to -0 next to larger values
      if (C > 1) x.data()[4 * C + 1] = 1e30f;
      Tensor got = Tensor::empty(x.shape());
      fake_quantize_bfp(x.data(), 6, C, block_format(f), got.data());
      const Tensor expected = emulated(f, x);
      for (int64_t i = 0; i < x.numel(); ++i)
        ASSERT_EQ(std::bit_cast<uint32_t>(got.data()[i]), std::bit_cast<uint32_t>(expected.data()[i]))
            << "element " << i << ": " << x.data()[i] << " -> " << got.data()[i] << ", emulation "
            << expected.data()[i];
    }
  }
  for (const char* spec : {"msfp12", "msfp16", "mxint8"})  // E = 8: steps down to 2^-149
    EXPECT_FALSE(fake_quantize_bfp_exact_in_float(block_format(Format::parse(spec)))) << spec;
}

// int8: the records hold exactly the emulation's bytes (decoded, the emulation's values), and a
// convolution on the tiles that take full-range bytes gives the emulation's result.
AffineRange range_of(const Tensor& x) {
  AffineRange r{0, 0};
  for (float v : x.span()) {
    r.min = std::min(r.min, v);
    r.max = std::max(r.max, v);
  }
  return r;
}

TEST(U8Activations, ExactlyTheEmulationsValues) {
  Rng rng(8);
  for (int64_t C : {1, 5, 64, 300}) {
    Tensor x = testing::random_tensor({7, C}, rng, 3.0);  // negative values too: the zero point is inside
    const AffineRange r = range_of(x);
    x.data()[0] = 1e9f;  // far beyond the range: saturates at 255
    Tensor expected = Tensor::empty(x.shape());
    quantize_tensor(Format::parse("int8"), false, x, expected, nullptr, &r);
    const BfpActivations a = quantize_u8_activations(x.data(), 7, C, AffineU8{r.scale(), r.zero_point()});
    Tensor values = Tensor::empty(x.shape());
    fake_quantize_u8(x.data(), x.numel(), AffineU8{r.scale(), r.zero_point()}, values.data());
    for (int64_t p = 0; p < 7; ++p)
      for (int64_t c = 0; c < C; ++c) {
        ASSERT_EQ((a.mantissas(p)[c] - r.zero_point()) * a.steps(p)[0], expected.data()[p * C + c]) << p << " " << c;
        ASSERT_EQ(values.data()[p * C + c], expected.data()[p * C + c]) << p << " " << c;
      }
  }
}

// Every instruction set's int8 quantizer (KernelSet::int8_bytes, int8_words: 32 or 16 at a time on
// AVX2, then the reference's loops) gives the emulation's q: lengths below, at and past the vector
// loops, exact halves (x / scale = k + 0.5 rounds to even), the clamps at 0 and 255 and at +-512,
// infinities; and flags a NaN wherever it sits.
TEST(U8Activations, EveryInstructionSetQuantizesAsTheEmulation) {
  Rng rng(21);
  // 0.25: x / scale is exact, and k + 0.5 is reached. 0.037: x a few floats from (k + 0.5) * scale,
  // where x / scale and x times the reciprocal of scale round to different integers.
  for (float scale : {0.25f, 0.037f})
    for (int zero_point : {0, 3, 128, 255})
      for (int64_t n : {1, 7, 8, 15, 16, 17, 31, 32, 33, 64, 100, 600}) {
        Tensor x = Tensor::empty({1, n});
        for (int64_t c = 0; c < n; ++c) {
          const double pick = rng.uniform();
          if (pick < 0.5) {
            float v = static_cast<float>((std::floor(rng.uniform() * 600 - 300) + 0.5) * scale);
            const int nudge = static_cast<int>(rng.uniform() * 5) - 2;
            for (int i = 0; i < std::abs(nudge); ++i) v = std::nextafter(v, nudge > 0 ? 1e9f : -1e9f);
            x.data()[c] = v;
          } else {
            x.data()[c] = pick < 0.9 ? static_cast<float>((rng.uniform() - 0.5) * 200)
                                     : static_cast<float>(rng.uniform() < 0.5 ? 1e9 : -1e9);
          }
        }
        x.data()[n - 1] = n % 2 ? std::numeric_limits<float>::infinity() : static_cast<float>(511.5 * scale);
        if (n > 2) x.data()[n / 2] = static_cast<float>(-512.5 * scale);
        Tensor expected = Tensor::empty(x.shape());
        for (int64_t c = 0; c < n; ++c) {
          // The emulation's int8 quantizer (quantize/format.h), written out: round half to even in float.
          const float y = std::clamp(x.data()[c] / scale, -512.0f, 512.0f);
          expected.data()[c] = std::clamp(std::nearbyint(y) + static_cast<float>(zero_point), 0.0f, 255.0f);
        }
        for (Isa isa : testing::isas_here()) {
          const KernelSet& ks = kernels(isa);
          std::vector<uint8_t> bytes(static_cast<size_t>(n));
          std::vector<int16_t> words(static_cast<size_t>(n));
          // The bytes as they are, and as AVX2's tile reads them (q ^ 0x80, KernelSet::int8_signed_bytes).
          for (const int flip : {0, 0x80}) {
            EXPECT_FALSE(ks.int8_bytes(x.data(), n, scale, zero_point, static_cast<uint8_t>(flip), bytes.data()))
                << ks.name;
            for (int64_t c = 0; c < n; ++c)
              ASSERT_EQ(bytes[static_cast<size_t>(c)], static_cast<int>(expected.data()[c]) ^ flip)
                  << ks.name << " n " << n << " c " << c << " x " << x.data()[c];
          }
          EXPECT_FALSE(ks.int8_words(x.data(), n, scale, zero_point, words.data())) << ks.name;
          for (int64_t c = 0; c < n; ++c)
            ASSERT_EQ(words[static_cast<size_t>(c)], static_cast<int>(expected.data()[c]) - zero_point)
                << ks.name << " n " << n << " c " << c;
          for (int64_t at : {int64_t{0}, n / 2, n - 1}) {
            Tensor poisoned = x.clone();
            poisoned.data()[at] = NAN;
            EXPECT_TRUE(ks.int8_bytes(poisoned.data(), n, scale, zero_point, 0, bytes.data())) << ks.name << " " << at;
            EXPECT_TRUE(ks.int8_words(poisoned.data(), n, scale, zero_point, words.data())) << ks.name << " " << at;
          }
        }
      }
}

// The kernel sets to check: every ISA here, and AVX2's tile on the AVX-512 set's panels.
std::vector<KernelSet> kernel_sets() {
  std::vector<KernelSet> sets;
  for (Isa isa : testing::isas_here()) sets.push_back(kernels(isa));
  if (cpu_supports(Isa::avx512)) {
    KernelSet fallback = kernels(Isa::avx512);
    fallback.bfp_name = "avx2 bfp on 32-wide panels";
    fallback.tile_bfp = kernels_avx2::tile_bfp_nr32;
    fallback.bfp_tap_index = false;  // as kernels() sets it up on an AVX-512 CPU without VNNI
    fallback.tile_bfp_full_bytes = true;
    fallback.int8_signed_bytes = true;
    fallback.tile_int8_words = kernels_avx2::tile_bfp_nr32;
    sets.push_back(fallback);
  }
  return sets;
}

// The kernel sets whose tile takes bytes up to 255 (kernel_sets(): AVX2's on 32-wide panels too).
std::vector<KernelSet> full_byte_sets() {
  std::vector<KernelSet> out;
  for (const KernelSet& ks : kernel_sets())
    if (ks.tile_bfp_full_bytes) out.push_back(ks);
  return out;
}

// The int8 tiles a packed layer can run on: the byte tile, and the word tile where its set has one.
std::vector<Int8Tile> int8_tiles(const PackedBfpConv& cv) {
  if (!cv.words) return {Int8Tile::bytes};
  return {Int8Tile::bytes, Int8Tile::words};
}

const char* tile_name(Int8Tile t) {
  return t == Int8Tile::words ? "word tile" : "byte tile";
}

TEST(Int8Conv, MatchesTheEmulationOnEveryShape) {
  const Format int8 = Format::parse("int8");
  Rng rng(12);
  struct Shape4 {
    int64_t n, c, h, k;
    int kernel, stride, pad;
  };
  for (const Shape4& s : {Shape4{1, 64, 6, 40, 3, 1, 1}, Shape4{64, 17, 3, 33, 1, 2, 0}, Shape4{2, 256, 2, 64, 3, 1, 1},
                          Shape4{1, 2048, 1, 10, 1, 1, 0},
                          // Batch 16 on 2x2 maps, where float and block floating point skip the padding's
                          // taps (tile_driver.h pixel_major): int8 too, less the zero point's share
                          // of the taps it reads only (its zero point here is no 0).
                          Shape4{16, 64, 2, 40, 3, 1, 1},
                          // Pixels whose every tap reads the padding: their tiles get no tap at all
                          // (K 20: a panel of all 16 columns, whose stage runs from registers, and a part).
                          Shape4{8, 16, 1, 20, 3, 1, 3}, Shape4{13, 40, 3, 70, 3, 1, 1}}) {
    SCOPED_TRACE(s.c);
    const Tensor x = activations({s.n, s.h, s.h, s.c}, rng);
    const AffineRange r{-0.25f, range_of(x).max};  // a zero point inside the range: padding is not byte 0
    const Tensor w = testing::random_tensor({s.k, s.c, s.kernel, s.kernel}, rng, 0.1);
    const Tensor b = testing::random_tensor({s.k}, rng);
    const EncodedTensor e = encode_weight(int8, w);
    Tensor xq = Tensor::empty(x.shape());
    quantize_tensor(int8, false, x, xq, nullptr, &r);
    const Conv2dParams params{s.stride, s.pad};
    const Tensor expected = conv_nhwc_ref(xq, decode_weight(int8, e, w.shape()), &b, params, nullptr, false);
    // With a residual and the ReLU too: the whole output stage, as a ResNet block's last convolution.
    const Tensor residual = testing::random_tensor(expected.shape(), rng);
    const Tensor expected_block = conv_nhwc_ref(xq, decode_weight(int8, e, w.shape()), &b, params, &residual, true);
    for (const KernelSet& ks : full_byte_sets()) {
      SCOPED_TRACE(ks.bfp_name);
      const PackedBfpConv cv = pack_conv_int8(s.k, s.c, s.kernel, s.kernel, e.integers, e.scales, &b, params,
                                              AffineU8{r.scale(), r.zero_point()}, ks);
      for (const Int8Tile tile : int8_tiles(cv)) {
        SCOPED_TRACE(tile_name(tile));
        testing::expect_close(conv_nhwc_bfp(cv, x, nullptr, false, nullptr, tile), expected, "int8 conv", 1e-4, 1e-5);
        testing::expect_close(conv_nhwc_bfp(cv, x, &residual, true, nullptr, tile), expected_block,
                              "int8 conv + residual, ReLU", 1e-4, 1e-5);
        testing::expect_same_over_residual(
            [&](const Tensor* r, Output to) { return conv_nhwc_bfp(cv, x, r, true, nullptr, tile, to); }, residual,
            "int8 conv over its residual");
      }
    }
  }
}

// Bytes at both ends (0 and 255) against weights at both ends everywhere: the products a saturating
// pair sum gets wrong (two products of 255 x 127 overflow int16). With the zero point at 0, as after a
// ReLU, and in the middle. -128 (fixed<8,I> weights reach it) on the tiles that take it; the AVX2 tile,
// which reads the bytes signed, refuses it, and the plan then runs the layer on float kernels.
TEST(Int8Conv, ExtremeBytesAndWeights) {
  const int64_t C = 512, K = 32;
  for (const AffineRange r : {AffineRange{-10, 10}, AffineRange{0, 10}}) {
    Tensor x = Tensor::empty({1, 2, 2, C});
    // Bytes 255 and 0 in adjacent pairs: two of 0 (s = -128 on AVX2) give its largest pair sum.
    for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = (i / 2) % 3 ? 10.0f : r.min;
    Tensor xq = Tensor::empty(x.shape());
    quantize_tensor(Format::parse("int8"), false, x, xq, nullptr, &r);
    const AffineU8 input{r.scale(), r.zero_point()};
    for (const int lowest : {-127, -128}) {
      SCOPED_TRACE(fmt::format("zero point {}, weights down to {}", r.zero_point(), lowest));
      std::vector<int32_t> q(static_cast<size_t>(K * C));
      for (size_t i = 0; i < q.size(); ++i) q[i] = (i / 2) % 3 ? 127 : lowest;  // pairs; sums not 0
      const std::vector<float> scales(K, 0.01f);
      Tensor wq = Tensor::empty({K, C, 1, 1});
      for (size_t i = 0; i < q.size(); ++i) wq.data()[i] = static_cast<float>(q[i]) * 0.01f;
      const Tensor expected = conv_nhwc_ref(xq, wq, nullptr, {1, 0}, nullptr, false);
      for (const KernelSet& ks : full_byte_sets()) {
        SCOPED_TRACE(ks.bfp_name);
        if (!int8_tile_takes(ks, q)) {
          EXPECT_EQ(lowest, -128);
          EXPECT_TRUE(ks.int8_signed_bytes);
          EXPECT_THROW(pack_conv_int8(K, C, 1, 1, q, scales, nullptr, {1, 0}, input, ks), Error);
          continue;
        }
        const PackedBfpConv cv = pack_conv_int8(K, C, 1, 1, q, scales, nullptr, {1, 0}, input, ks);
        for (const Int8Tile tile : int8_tiles(cv)) {
          SCOPED_TRACE(tile_name(tile));
          testing::expect_close(conv_nhwc_bfp(cv, x, nullptr, false, nullptr, tile), expected, "extreme bytes", 1e-5,
                                1e-6);
        }
      }
    }
  }
  // Every set has an int8 tile; AVX2's takes weights down to -127.
  for (Isa isa : testing::isas_here()) EXPECT_TRUE(kernels(isa).tile_bfp_full_bytes) << isa_name(isa);
  if (cpu_supports(Isa::avx2)) {
    EXPECT_FALSE(int8_tile_takes(kernels(Isa::avx2), std::vector<int32_t>{3, -128, 5}));
    EXPECT_TRUE(int8_tile_takes(kernels(Isa::avx2), std::vector<int32_t>{3, -127, 127}));
  }
}

// A NaN in one image reaches every int8 output that reads it (its pixel's record has a NaN step), in
// whole-map rows at batch 1 and pixel by pixel at batch 16, through the ReLU, in a full panel of 16
// columns and a part of one; the other images stay finite.
TEST(Int8Conv, NanInAnInputReachesTheOutputsThatReadIt) {
  for (const int64_t n : {1, 16}) {
    Rng rng(3);
    Tensor x = activations({n, 2, 2, 24}, rng);
    x.data()[5] = NAN;  // image 0, pixel (0, 0): every 3x3 output of a 2x2 map reads it
    const Tensor w = testing::random_tensor({20, 24, 3, 3}, rng, 0.1);
    const EncodedTensor e = encode_weight(Format::parse("int8"), w);
    for (const KernelSet& ks : full_byte_sets()) {
      SCOPED_TRACE(fmt::format("{} batch {}", ks.bfp_name, n));
      const PackedBfpConv cv =
          pack_conv_int8(20, 24, 3, 3, e.integers, e.scales, nullptr, {1, 1}, AffineU8{0.02f, 3}, ks);
      for (const Int8Tile tile : int8_tiles(cv)) {
        SCOPED_TRACE(tile_name(tile));
        const Tensor y = conv_nhwc_bfp(cv, x, nullptr, true, nullptr, tile);
        for (int64_t i = 0; i < y.numel(); ++i)
          ASSERT_EQ(std::isnan(y.data()[i]), i < 4 * 20) << i;  // image 0's 4 pixels x 20 channels
      }
    }
  }
}

// The word tile sums the same integers as the byte tile, (q - zero point) w exactly, and scales them
// the same way: their outputs are equal bit for bit, on each of the driver's three orders (pixel by
// pixel on a small map, chunks of rows, and rows outer for small weights over many rows), with a
// residual and ReLU, channel counts off the groups of 4 and panels of 16, and zero points 0 and not.
TEST(Int8Conv, WordTileEqualsTheByteTile) {
  struct Shape4 {
    int64_t n, c, h, k;
    int kernel, stride, pad;
  };
  Rng rng(21);
  // Rows outer needs 4 chunks of rows per thread (bfp_rows_outer): 10x10 maps, 8 images a thread.
  const int64_t many = 8 * num_threads();
  for (const Shape4& s : {Shape4{16, 64, 2, 40, 3, 1, 1}, Shape4{3, 33, 9, 70, 3, 2, 1}, Shape4{2, 17, 10, 24, 1, 1, 0},
                          Shape4{many, 64, 10, 48, 1, 1, 0}, Shape4{1, 130, 5, 16, 3, 1, 1}}) {
    for (const int zero_point : {0, 37}) {
      SCOPED_TRACE(fmt::format("{}x{}x{}x{} -> {} {}x{}/{}, zero point {}", s.n, s.h, s.h, s.c, s.k, s.kernel, s.kernel,
                               s.stride, zero_point));
      Tensor x = activations({s.n, s.h, s.h, s.c}, rng);
      for (int64_t i = 0; i < x.numel(); i += 7) x.data()[i] = 1e3f;  // saturates at 255
      const Tensor w = testing::random_tensor({s.k, s.c, s.kernel, s.kernel}, rng, 0.1);
      const Tensor b = testing::random_tensor({s.k}, rng);
      const EncodedTensor e = encode_weight(Format::parse("int8"), w);
      const Conv2dParams params{s.stride, s.pad};
      const AffineU8 input{0.01f, zero_point};
      bool compared = false;
      for (const KernelSet& ks : full_byte_sets()) {
        const PackedBfpConv cv =
            pack_conv_int8(s.k, s.c, s.kernel, s.kernel, e.integers, e.scales, &b, params, input, ks);
        if (!cv.words) continue;
        SCOPED_TRACE(ks.bfp_name);
        if (s.h == 10 && s.c == 64) {  // the many-rows case
          EXPECT_TRUE(bfp_rows_outer(static_cast<int64_t>(cv.weights.size()), many * 100));
        }
        const Tensor bytes = conv_nhwc_bfp(cv, x, nullptr, true, nullptr, Int8Tile::bytes);
        const Tensor residual = testing::random_tensor(bytes.shape(), rng);
        const Tensor words = conv_nhwc_bfp(cv, x, nullptr, true, nullptr, Int8Tile::words);
        ASSERT_EQ(std::memcmp(words.data(), bytes.data(), sizeof(float) * bytes.numel()), 0);
        const Tensor bytes_r = conv_nhwc_bfp(cv, x, &residual, true, nullptr, Int8Tile::bytes);
        const Tensor words_r = conv_nhwc_bfp(cv, x, &residual, true, nullptr, Int8Tile::words);
        ASSERT_EQ(std::memcmp(words_r.data(), bytes_r.data(), sizeof(float) * bytes_r.numel()), 0);
        compared = true;
      }
      if (cpu_supports(Isa::avx2)) {
        EXPECT_TRUE(compared) << "AVX2 has a word tile";
      }
    }
  }
}

// The word panels are packed by the first call that runs the word tile, once, and only then: a call
// on few rows takes the byte tile and packs nothing.
TEST(Int8Conv, WordPanelsPackedOnFirstUse) {
  if (!cpu_supports(Isa::avx2)) GTEST_SKIP() << "no word tile on this CPU";
  Rng rng(8);
  const Tensor w = testing::random_tensor({20, 24, 3, 3}, rng, 0.1);
  const EncodedTensor e = encode_weight(Format::parse("int8"), w);
  const PackedBfpConv cv =
      pack_conv_int8(20, 24, 3, 3, e.integers, e.scales, nullptr, {1, 1}, AffineU8{0.02f, 3}, kernels(Isa::avx2));
  ASSERT_TRUE(cv.words);
  EXPECT_EQ(cv.words->packed_bytes(), 0);
  conv_nhwc_bfp(cv, activations({1, 2, 2, 24}, rng), nullptr, true);  // 4 rows: the byte tile
  EXPECT_FALSE(int8_words_pay(cv, 4));
  EXPECT_EQ(cv.words->packed_bytes(), 0);
  const Tensor x = activations({4, 6, 6, 24}, rng);  // 144 rows
  EXPECT_TRUE(int8_words_pay(cv, 144));
  const Tensor first = conv_nhwc_bfp(cv, x, nullptr, true);
  const int64_t packed = cv.words->packed_bytes();
  EXPECT_GE(packed, static_cast<int64_t>(2 * cv.weights.size()));
  const Tensor again = conv_nhwc_bfp(cv, x, nullptr, true);
  EXPECT_EQ(cv.words->packed_bytes(), packed);
  ASSERT_EQ(std::memcmp(first.data(), again.data(), sizeof(float) * first.numel()), 0);
  const Tensor bytes = conv_nhwc_bfp(cv, x, nullptr, true, nullptr, Int8Tile::bytes);
  ASSERT_EQ(std::memcmp(first.data(), bytes.data(), sizeof(float) * first.numel()), 0);
}

// The word records: q - zero point per channel as int16 after the scale, zeros past C, the bytes'
// q computed as quantize_u8_activations computes them.
TEST(Int8Conv, WordRecordsHoldTheBytesLessTheZeroPoint) {
  Rng rng(5);
  const int64_t pixels = 7, C = 21;  // 24 words a record, 3 of them padding
  Tensor x = testing::random_tensor({pixels, C}, rng);
  x.data()[3] = 1e6f;
  x.data()[4] = -1e6f;
  x.data()[C + 2] = NAN;  // pixel 1
  const AffineU8 q{0.013f, 100};
  const BfpActivations bytes = quantize_u8_activations(x.data(), pixels, C, q);
  const BfpActivations words = quantize_u8_words(x.data(), pixels, C, q);
  ASSERT_EQ(words.value_bytes, 2);
  ASSERT_EQ(words.record_floats(), 1 + 2 * bytes.groups);
  for (int64_t p = 0; p < pixels; ++p) {
    const float step = words.steps(p)[0];
    if (p == 1)
      EXPECT_TRUE(std::isnan(step));
    else
      EXPECT_EQ(step, q.scale);
    const auto* w = reinterpret_cast<const int16_t*>(words.mantissas(p));
    for (int64_t c = 0; c < 4 * words.groups; ++c) {
      const int expected = c < C ? bytes.mantissas(p)[c] - q.zero_point : 0;
      ASSERT_EQ(w[c], expected) << "pixel " << p << " channel " << c;
    }
  }
  EXPECT_EQ(reinterpret_cast<const int16_t*>(words.mantissas(0))[3], 255 - 100);
  EXPECT_EQ(reinterpret_cast<const int16_t*>(words.mantissas(0))[4], -100);
}

struct BfpCase {
  const char* format;
  int64_t n, c, h, w, k;
  int kernel, stride, pad;
};

void PrintTo(const BfpCase& c, std::ostream* os) {
  *os << c.format << " " << c.n << "x" << c.c << "x" << c.h << "x" << c.w << " -> " << c.k << " " << c.kernel << "x"
      << c.kernel << "/" << c.stride;
}

// A convolution on every kernel set against a float32 conv of the emulation's operands, with and
// without a residual.
void expect_emulation(const BfpCase& c) {
  const Format f = Format::parse(c.format);
  Rng rng(11);
  const Tensor x = activations({c.n, c.h, c.w, c.c}, rng);
  const double fan_in = static_cast<double>(c.c * c.kernel * c.kernel);
  const Tensor w = testing::random_tensor({c.k, c.c, c.kernel, c.kernel}, rng, 1.0 / std::sqrt(fan_in));
  const Tensor b = testing::random_tensor({c.k}, rng);
  const EncodedTensor e = encode_weight(f, w);
  const Tensor wq = decode_weight(f, e, w.shape());
  const BfpWeight weight{c.k, c.c, c.kernel, c.kernel, e.integers, e.exponents, block_format(f)};
  const Conv2dParams params{c.stride, c.pad};
  const Tensor xq = emulated(f, x);
  const Tensor plain = conv_nhwc_ref(xq, wq, &b, params, nullptr, true);
  const Tensor residual = testing::random_tensor(plain.shape(), rng);
  const Tensor with_residual = conv_nhwc_ref(xq, wq, &b, params, &residual, true);
  for (const KernelSet& ks : kernel_sets()) {
    SCOPED_TRACE(ks.bfp_name);
    PackedBfpConv cv = pack_conv_bfp(weight, &b, params, block_format(f), ks.isa);
    cv.kernels = &ks;
    testing::expect_close(conv_nhwc_bfp(cv, x, nullptr, true), plain, "conv + bias, ReLU", 1e-4, 1e-5);
    testing::expect_close(conv_nhwc_bfp(cv, x, &residual, true), with_residual, "conv + bias + residual, ReLU", 1e-4,
                          1e-5);
    testing::expect_same_over_residual(
        [&](const Tensor* r, Output to) { return conv_nhwc_bfp(cv, x, r, true, nullptr, Int8Tile::chosen, to); },
        residual, "block floating point conv over its residual");
  }
}

class BfpConvVsEmulation : public ::testing::TestWithParam<BfpCase> {};

TEST_P(BfpConvVsEmulation, EveryKernelSetEveryOutputStage) {
  expect_emulation(GetParam());
}

// Many rows and small weights: conv_nhwc_bfp runs every panel of a tile's rows in turn (rows_outer),
// with a last panel only partly filled.
TEST(BfpConv, SmallWeightsOverManyRows) {
  const int64_t batch = 4 * kChunkRows * num_threads() / 100 + 1;  // 10x10 maps: 100 rows each
  const BfpCase c{"ms-fp8", batch, 64, 10, 10, 72, 1, 1, 0};
  for (const KernelSet& ks : kernel_sets()) {
    const int64_t groups = 16, panels = (72 + ks.nr - 1) / ks.nr;
    EXPECT_TRUE(bfp_rows_outer(panels * groups * ks.nr * 4, batch * 100)) << ks.bfp_name;
  }
  expect_emulation(c);
}

// A block's shortcut and first convolution read one tensor: the second takes the first's records from
// the cache, and gives what it gives without it. A different tensor, or a format with other blocks,
// is quantized afresh.
TEST(BfpConv, QuantizedInputCacheServesOnlyItsOwnTensorAndFormat) {
  Rng rng(5);
  const Format f = Format::parse("ms-fp8"), other = Format::parse("bfp<5,2,32>");
  const Tensor x = activations({2, 5, 5, 140}, rng), y = activations({2, 5, 5, 140}, rng);
  auto packed = [&](const Format& format, int64_t K, int kernel, int stride) {
    const Tensor w = testing::random_tensor({K, 140, kernel, kernel}, rng, 0.1);
    const EncodedTensor e = encode_weight(format, w);
    return pack_conv_bfp({K, 140, kernel, kernel, e.integers, e.exponents, block_format(format)}, nullptr,
                         {stride, kernel / 2}, block_format(format), active_isa());
  };
  const PackedBfpConv shortcut = packed(f, 24, 1, 2), conv1 = packed(f, 16, 3, 1), narrow = packed(other, 16, 1, 1);
  QuantizedInputCache cache;
  conv_nhwc_bfp(shortcut, x, nullptr, false, &cache);
  ASSERT_EQ(cache.source.data(), x.data());
  ASSERT_EQ(cache.records.pixels, 50);
  const float* records = cache.records.storage.data();
  testing::expect_close(conv_nhwc_bfp(conv1, x, nullptr, true, &cache), conv_nhwc_bfp(conv1, x, nullptr, true),
                        "conv1 from the shortcut's records", 0, 0);
  EXPECT_EQ(cache.records.storage.data(), records);  // used, not made again
  testing::expect_close(conv_nhwc_bfp(conv1, y, nullptr, true, &cache), conv_nhwc_bfp(conv1, y, nullptr, true),
                        "another tensor of the same shape", 0, 0);
  EXPECT_EQ(cache.source.data(), y.data());
  testing::expect_close(conv_nhwc_bfp(narrow, y, nullptr, true, &cache), conv_nhwc_bfp(narrow, y, nullptr, true),
                        "the same tensor in blocks of 32", 0, 0);
  EXPECT_EQ(cache.format.block, 32);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, BfpConvVsEmulation,
    ::testing::Values(BfpCase{"ms-fp8", 1, 64, 10, 10, 64, 3, 1, 1},  // layer1's 3x3 at batch 1
                      BfpCase{"ms-fp8", 3, 17, 7, 7, 33, 3, 2, 1},    // 7x7 maps, strided, channels not a multiple of 4
                      BfpCase{"ms-fp8", 2, 300, 3, 3, 70, 1, 1, 0},   // 1x1, C not a multiple of the block
                      BfpCase{"ms-fp8", 64, 8, 5, 5, 16, 1, 2, 0},    // batch 64, strided 1x1 downsample
                      BfpCase{"ms-fp8", 1, 2048, 1, 1, 40, 1, 1, 0},  // fc1 as a 1x1 convolution: 16 blocks
                      BfpCase{"ms-fp8", 1, 3, 9, 9, 8, 7, 2, 3},      // a stem-like 7x7 over 3 channels
                      BfpCase{"ms-fp9", 2, 256, 4, 4, 48, 3, 1, 1},   // 7-bit mantissa products, int16 sums
                      BfpCase{"msfp12", 2, 40, 5, 5, 20, 3, 1, 1},    // blocks of 16
                      BfpCase{"msfp16", 2, 96, 4, 4, 36, 3, 1, 1},    // M = 7: pair sums widened every step
                      BfpCase{"mxint8", 64, 64, 2, 2, 64, 1, 1, 0},   // batch 64, blocks of 32
                      // Pixel by pixel (tile_driver.h pixel_major), the padding's taps skipped:
                      BfpCase{"ms-fp8", 16, 256, 2, 2, 64, 3, 1, 1},  // layer4-like 2x2 maps at batch 16, 2 blocks
                      BfpCase{"ms-fp9", 13, 40, 5, 5, 70, 3, 2, 1},   // batch 13, strided, K off the panel
                      BfpCase{"msfp12", 9, 48, 3, 3, 33, 3, 1, 1},    // 3x3 maps, blocks of 16
                      BfpCase{"msfp16", 9, 96, 3, 3, 36, 3, 1, 1},    // M = 7: AVX2's widening loop
                      BfpCase{"ms-fp8", 8, 16, 1, 1, 20, 3, 1, 3}));  // pixels whose every tap reads padding

// The largest mantissas everywhere: every activation and weight at the top of its block, where an
// int16 sum or a saturating pair sum would show first.
TEST(BfpConv, LargestMantissasEverywhere) {
  for (const char* spec : {"ms-fp8", "ms-fp9", "msfp16", "mxint8"}) {
    SCOPED_TRACE(spec);
    const Format f = Format::parse(spec);
    const int64_t C = 256, K = 40;
    Tensor x = Tensor::empty({2, 3, 3, C}), w = Tensor::empty({K, C, 3, 3});
    x.fill(1.75f);  // 1.75 = 7 * 2^-2: the top mantissa for M = 2 and 3, and near it for M = 7
    for (int64_t i = 0; i < w.numel(); ++i) w.data()[i] = i % 3 == 0 ? -1.75f : 1.75f;
    const EncodedTensor e = encode_weight(f, w);
    const Tensor wq = decode_weight(f, e, w.shape());
    const BfpWeight weight{K, C, 3, 3, e.integers, e.exponents, block_format(f)};
    const Tensor expected = conv_nhwc_ref(emulated(f, x), wq, nullptr, {1, 1}, nullptr, false);
    for (const KernelSet& ks : kernel_sets()) {
      SCOPED_TRACE(ks.bfp_name);
      PackedBfpConv cv = pack_conv_bfp(weight, nullptr, {1, 1}, block_format(f), ks.isa);
      cv.kernels = &ks;
      testing::expect_close(conv_nhwc_bfp(cv, x, nullptr, false), expected, "largest mantissas", 1e-6, 1e-7);
    }
  }
}

// Sparse jet-like inputs (almost every pixel exactly zero), the smallest and largest exponents (values
// far below and above ms-fp8's range), and all-zero blocks, on one layer.
TEST(BfpConv, SparseInputsAndExponentExtremes) {
  const Format f = Format::parse("ms-fp8");
  Rng rng(5);
  const int64_t C = 256, K = 64;
  Tensor x = activations({64, 4, 4, C}, rng, 0.97, 2);
  for (int64_t c = 0; c < 128; ++c) x.data()[c] = 1e-7f;       // below 2^-15: the smallest exponent
  for (int64_t c = 128; c < C; ++c) x.data()[C + c] = 1e6f;    // above the largest: saturates
  for (int64_t c = 0; c < C; ++c) x.data()[2 * C + c] = 0.0f;  // both blocks all zero
  const Tensor w = testing::random_tensor({K, C, 1, 1}, rng, 1.0 / 16);
  const EncodedTensor e = encode_weight(f, w);
  const BfpWeight weight{K, C, 1, 1, e.integers, e.exponents, block_format(f)};
  const Tensor expected =
      conv_nhwc_ref(emulated(f, x), decode_weight(f, e, w.shape()), nullptr, {1, 0}, nullptr, false);
  for (const KernelSet& ks : kernel_sets()) {
    SCOPED_TRACE(ks.bfp_name);
    PackedBfpConv cv = pack_conv_bfp(weight, nullptr, {1, 0}, block_format(f), ks.isa);
    cv.kernels = &ks;
    testing::expect_close(conv_nhwc_bfp(cv, x, nullptr, false), expected, "sparse, extreme exponents", 1e-4, 1e-5);
  }
}

TEST(BfpConv, NanInAnInputReachesTheOutputsThatReadIt) {
  const Format f = Format::parse("ms-fp8");
  Rng rng(2);
  Tensor x = activations({1, 3, 3, 8}, rng);
  x.data()[4 * 8 + 2] = NAN;                                    // the centre pixel: every 3x3 output reads it
  const Tensor w = testing::random_tensor({20, 8, 3, 3}, rng);  // a full panel of 16 columns and a part
  const EncodedTensor e = encode_weight(f, w);
  const BfpWeight weight{20, 8, 3, 3, e.integers, e.exponents, block_format(f)};
  for (Isa isa : testing::isas_here()) {
    const Tensor y = conv_nhwc_bfp(pack_conv_bfp(weight, nullptr, {1, 1}, block_format(f), isa), x, nullptr, true);
    for (float v : y.span()) EXPECT_TRUE(std::isnan(v)) << isa_name(isa);
  }
}

TEST(BfpConv, FormatsTheKernelsCannotRunAreRefused) {
  const BlockFormat wide{8, 16, -127, 127};  // 8-bit mantissas do not fit a signed byte
  const BlockFormat odd{2, 6, -15, 15};      // blocks of 6 channels split a group of 4
  const BlockFormat ms_fp8{2, 128, -15, 15};
  EXPECT_FALSE(bfp_kernels_apply(wide, wide));
  EXPECT_FALSE(bfp_kernels_apply(odd, odd));
  EXPECT_FALSE(bfp_kernels_apply(ms_fp8, BlockFormat{3, 16, -127, 127}));  // blocks differ
  EXPECT_TRUE(bfp_kernels_apply(ms_fp8, ms_fp8));
}

}  // namespace
}  // namespace toptag
