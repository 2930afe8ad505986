// Number formats against hand-computed values, the tensor quantizers against the scalar references,
// batch-norm folding, straight-through gradients, quantized checkpoints and fine-tuning recovery.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <limits>

#include "datasets/generator.h"
#include "eval/metrics.h"
#include "io/checkpoint.h"
#include "nn/ops/softmax.h"
#include "quantize/model.h"
#include "tagger/inference.h"
#include "testing.h"
#include "training/adam.h"
#include "training/trainer.h"

namespace toptag {
namespace {

// Named error limits (docs/STYLE.md: explicit constants in quantization tests).
constexpr double kExact = 0.0;
constexpr double kFoldTolerance = 1e-5;
constexpr const char* kAggressive = "bfp<3,1,64>";  // one magnitude bit, 3-bit shared exponents

double fixed(double x, const char* spec) {
  return fixed_ref(x, Format::parse(spec));
}

TEST(FixedPoint, HandComputedValuesFromTheApFixedSemantics) {
  // The examples.
  EXPECT_EQ(fixed(1.25, "fixed<3,2,RND>"), 1.5);
  EXPECT_EQ(fixed(-1.25, "fixed<3,2,RND>"), -1.0);
  EXPECT_EQ(fixed(19, "fixed<4,4,TRN,SAT>"), 7);
  EXPECT_EQ(fixed(-19, "fixed<4,4,TRN,SAT>"), -8);
  // TRN floors (also for negatives); RND_CONV rounds half to even.
  EXPECT_EQ(fixed(1.4, "fixed<3,2>"), 1.0);
  EXPECT_EQ(fixed(-0.1, "fixed<3,2>"), -0.5);
  EXPECT_EQ(fixed(1.25, "fixed<3,2,RND_CONV>"), 1.0);    // 2.5 LSB -> 2
  EXPECT_EQ(fixed(0.75, "fixed<3,2,RND_CONV>"), 1.0);    // 1.5 LSB -> 2
  EXPECT_EQ(fixed(-0.75, "fixed<3,2,RND_CONV>"), -1.0);  // -1.5 LSB -> -2
  // WRAP keeps the low W bits in two's complement: 9 -> 9 - 16 = -7, 19 -> 3, -9 -> 7.
  EXPECT_EQ(fixed(9, "fixed<4,4>"), -7);
  EXPECT_EQ(fixed(19, "fixed<4,4>"), 3);
  EXPECT_EQ(fixed(-9, "fixed<4,4>"), 7);
  // RND overflowing by rounding up: 1.75 -> 2.0 is past the max 1.5: SAT clamps, WRAP wraps to -2.
  EXPECT_EQ(fixed(1.75, "fixed<3,2,RND,SAT>"), 1.5);
  EXPECT_EQ(fixed(1.75, "fixed<3,2,RND,WRAP>"), -2.0);
  // hls4ml's default fixed<16,6>: LSB 2^-10, range [-32, 32 - 2^-10].
  const Format d = Format::parse("fixed<16,6>");
  EXPECT_EQ(fixed_lsb(d), std::ldexp(1.0, -10));
  EXPECT_EQ(fixed_min(d), -32.0);
  EXPECT_EQ(fixed_max(d), 32.0 - std::ldexp(1.0, -10));
}

TEST(FixedPoint, ErrorAtMostHalfAnLsbInsideTheRangeWhenRounding) {
  Rng rng(1);
  for (const char* spec : {"fixed<8,3,RND,SAT>", "fixed<16,6,RND_CONV,SAT>", "fixed<12,2,RND>"}) {
    const Format f = Format::parse(spec);
    for (int i = 0; i < 2000; ++i) {
      const double x = rng.uniform(fixed_min(f), fixed_max(f));
      EXPECT_LE(std::fabs(fixed_ref(x, f) - x), fixed_lsb(f) / 2 + 1e-12) << spec << " x=" << x;
    }
  }
  const Format trn = Format::parse("fixed<8,3>");
  for (int i = 0; i < 2000; ++i) {
    const double x = rng.uniform(fixed_min(trn), fixed_max(trn));
    const double e = x - fixed_ref(x, trn);
    EXPECT_GE(e, 0.0);
    EXPECT_LT(e, fixed_lsb(trn));
  }
}

// ---- hls4ml's names: Vivado HLS ap_fixed / ap_ufixed / ap_int / ap_uint (Xilinx UG902) -----------

// Checks fixed_integer_ref and the tensor quantizer (an activation, so unsigned formats go through too)
// against integers computed by hand: x = lsbs[i] * LSB must give want[i] * LSB.
void expect_integers(const std::string& spec, const std::vector<double>& lsbs, const std::vector<int64_t>& want) {
  ASSERT_EQ(lsbs.size(), want.size()) << spec;
  const Format f = Format::parse(spec);
  std::vector<float> xs;
  for (double k : lsbs) xs.push_back(static_cast<float>(k * fixed_lsb(f)));
  Tensor x = Tensor::from({1, static_cast<int64_t>(xs.size())}, xs);
  Tensor y = Tensor::empty(x.shape());
  quantize_tensor(f, false, x, y, nullptr);
  for (size_t i = 0; i < xs.size(); ++i) {
    EXPECT_EQ(fixed_integer_ref(xs[i], f), want[i]) << spec << " at " << lsbs[i] << " LSB";
    EXPECT_EQ(y.data()[i], static_cast<float>(static_cast<double>(want[i]) * fixed_lsb(f)))
        << spec << " (tensor) at " << lsbs[i] << " LSB";
  }
}

TEST(Hls4mlFormats, EveryRoundingModeAtItsHalves) {
  // LSB 2^-4; inputs in LSBs: ties at +-0.5, +-1.5, +-2.5, then just below and above a half, and a quarter.
  constexpr double kHair = 1.0 / 1024;
  const std::vector<double> x = {0.5,         -0.5,         1.5,          -1.5, 2.5,   -2.5, 0.5 - kHair,
                                 0.5 + kHair, -0.5 + kHair, -0.5 - kHair, 1.25, -1.25, 3.0,  -3.0};
  // clang-format off
  expect_integers("ap_fixed<8,4,AP_TRN>",         x, {0, -1, 1, -2, 2, -3, 0, 0, -1, -1, 1, -2, 3, -3});  // floor
  expect_integers("ap_fixed<8,4,AP_TRN_ZERO>",    x, {0,  0, 1, -1, 2, -2, 0, 0,  0,  0, 1, -1, 3, -3});  // toward 0
  expect_integers("ap_fixed<8,4,AP_RND>",         x, {1,  0, 2, -1, 3, -2, 0, 1,  0, -1, 1, -1, 3, -3});  // half up
  expect_integers("ap_fixed<8,4,AP_RND_ZERO>",    x, {0,  0, 1, -1, 2, -2, 0, 1,  0, -1, 1, -1, 3, -3});  // half to 0
  expect_integers("ap_fixed<8,4,AP_RND_MIN_INF>", x, {0, -1, 1, -2, 2, -3, 0, 1,  0, -1, 1, -1, 3, -3});  // half down
  expect_integers("ap_fixed<8,4,AP_RND_INF>",     x, {1, -1, 2, -2, 3, -3, 0, 1,  0, -1, 1, -1, 3, -3});  // half away
  expect_integers("ap_fixed<8,4,AP_RND_CONV>",    x, {0,  0, 2, -2, 2, -2, 0, 1,  0, -1, 1, -1, 3, -3});  // half even
  // clang-format on
  // UG902's examples, ap_fixed<3,2,Q> (LSB 0.5) at 1.25 and -1.25.
  EXPECT_EQ(fixed(1.25, "ap_fixed<3,2,AP_RND_ZERO>"), 1.0);
  EXPECT_EQ(fixed(-1.25, "ap_fixed<3,2,AP_RND_ZERO>"), -1.0);
  EXPECT_EQ(fixed(-1.25, "ap_fixed<3,2,AP_RND_MIN_INF>"), -1.5);
  EXPECT_EQ(fixed(-1.25, "ap_fixed<3,2,AP_RND_INF>"), -1.5);
  EXPECT_EQ(fixed(-1.25, "ap_fixed<3,2,AP_TRN_ZERO>"), -1.0);
  // Unsigned rounds the same way.
  expect_integers("ap_ufixed<8,4,AP_RND_CONV>", {0.5, 1.5, 2.5, 2.5 + kHair}, {0, 2, 2, 3});
}

TEST(Hls4mlFormats, EveryOverflowModeAtItsEdges) {
  // ap_fixed<4,4>: integers, range [-8, 7]. max, max + 1, min, min - 1, large, and +-19 (UG902's example).
  const std::vector<double> s = {7, 8, -8, -9, 100, -100, 19, -19};
  expect_integers("ap_fixed<4,4,AP_TRN,AP_WRAP>", s, {7, -8, -8, 7, 4, -4, 3, -3});  // low 4 bits, two's complement
  expect_integers("ap_fixed<4,4,AP_TRN,AP_SAT>", s, {7, 7, -8, -8, 7, -8, 7, -8});
  expect_integers("ap_fixed<4,4,AP_TRN,AP_SAT_ZERO>", s, {7, 0, -8, 0, 0, 0, 0, 0});
  expect_integers("ap_fixed<4,4,AP_TRN,AP_SAT_SYM>", s, {7, 7, -7, -7, 7, -7, 7, -7});  // -8 itself becomes -7
  // ap_ufixed<4,4>: range [0, 15].
  const std::vector<double> u = {15, 16, 0, -1, 100, -100, 19, -19};
  expect_integers("ap_ufixed<4,4,AP_TRN,AP_WRAP>", u, {15, 0, 0, 15, 4, 12, 3, 13});  // low 4 bits, unsigned
  expect_integers("ap_ufixed<4,4,AP_TRN,AP_SAT>", u, {15, 15, 0, 0, 15, 0, 15, 0});
  expect_integers("ap_ufixed<4,4,AP_TRN,AP_SAT_ZERO>", u, {15, 0, 0, 0, 0, 0, 0, 0});
  expect_integers("ap_ufixed<4,4,AP_TRN,AP_SAT_SYM>", u, {15, 15, 0, 0, 15, 0, 15, 0});  // as AP_SAT
  // Rounding first, then overflow: ap_fixed<6,3> (LSB 1/8, max 31/8): 31.5 LSB rounds up to 32.
  expect_integers("ap_fixed<6,3,AP_RND,AP_SAT>", {31.5, -32.5}, {31, -32});
  expect_integers("ap_fixed<6,3,AP_RND,AP_SAT_ZERO>", {31.5, -32.5}, {0, -32});  // -32.5 rounds half up to -32
  expect_integers("ap_fixed<6,3,AP_RND,AP_WRAP>", {31.5, -32.5}, {-32, -32});
  expect_integers("ap_fixed<6,3,AP_RND_INF,AP_SAT_SYM>", {31.5, -31.5, -32.5}, {31, -31, -31});
  // The ranges, as fixed_min / fixed_max report them.
  EXPECT_EQ(fixed_min(Format::parse("ap_fixed<6,3,AP_RND,AP_SAT_SYM>")), -3.875);
  EXPECT_EQ(fixed_max(Format::parse("ap_ufixed<8,3>")), 8.0 - 1.0 / 32);
  EXPECT_EQ(fixed_min(Format::parse("ap_ufixed<8,3>")), 0.0);
}

TEST(Hls4mlFormats, InfinitiesOverflowAndNanPassesThrough) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const std::pair<const char*, std::pair<double, double>> cases[] = {
      {"ap_fixed<4,4,AP_TRN,AP_WRAP>", {7, -8}},  // no bits to wrap: saturates
      {"ap_fixed<4,4,AP_TRN,AP_SAT>", {7, -8}},      {"ap_fixed<4,4,AP_TRN,AP_SAT_ZERO>", {0, 0}},
      {"ap_fixed<4,4,AP_TRN,AP_SAT_SYM>", {7, -7}},  {"ap_ufixed<4,4,AP_TRN,AP_WRAP>", {15, 0}},
      {"ap_ufixed<4,4,AP_TRN,AP_SAT_ZERO>", {0, 0}}, {"ap_ufixed<4,4,AP_TRN,AP_SAT_SYM>", {15, 0}}};
  for (const auto& [spec, want] : cases) {
    EXPECT_EQ(fixed(kInf, spec), want.first) << spec;
    EXPECT_EQ(fixed(-kInf, spec), want.second) << spec;
  }
  // Activations through the tensor path: NaN stays NaN, and the masked STE passes only what is kept.
  const Format f = Format::parse("ap_ufixed<8,3,AP_RND,AP_SAT>");  // LSB 1/32, range [0, 255/32]
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Tensor x = Tensor::from({1, 7}, std::vector<float>{-1.0f, 0.0f, 0.1f, 7.9f, 8.0f, nan, INFINITY});
  Tensor y = Tensor::empty(x.shape()), ok = Tensor::empty(x.shape());
  quantize_tensor(f, false, x, y, &ok);
  const std::vector<float> want = {0.0f, 0.0f, 3.0f / 32, 253.0f / 32, 255.0f / 32};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(y.data()[i], want[i]) << i;
  EXPECT_TRUE(std::isnan(y.data()[5]));
  EXPECT_EQ(y.data()[6], 255.0f / 32);
  const std::vector<float> kept = {0, 1, 1, 1, 0, 0, 0};
  for (size_t i = 0; i < kept.size(); ++i) EXPECT_EQ(ok.data()[i], kept[i]) << i;
}

TEST(Hls4mlFormats, IntegerTypesAndIntegerBitsOutsideTheWord) {
  // ap_int<W> = ap_fixed<W,W>, ap_uint<W> = ap_ufixed<W,W>: LSB 1, AP_TRN, AP_WRAP.
  EXPECT_EQ(Format::parse("ap_int<8>").str(), "fixed<8,8,TRN,WRAP>");
  EXPECT_EQ(Format::parse("AP_UINT<8>").str(), "ufixed<8,8,TRN,WRAP>");
  expect_integers("ap_int<8>", {127.5, 128, -128, -129, -0.5, 300}, {127, -128, -128, 127, -1, 44});
  expect_integers("ap_uint<8>", {255.5, 256, -1, 3.7, 300}, {255, 0, 255, 3, 44});
  // I above W: LSB 2^(6-4) = 4, range [-32, 28]; I below 0: LSB 2^-6, range [-1/8, 1/8 - 1/64].
  EXPECT_EQ(fixed_lsb(Format::parse("ap_fixed<4,6>")), 4.0);
  EXPECT_EQ(fixed(5, "ap_fixed<4,6>"), 4.0);
  EXPECT_EQ(fixed(6, "ap_fixed<4,6,AP_RND>"), 8.0);
  EXPECT_EQ(fixed(30, "ap_fixed<4,6,AP_TRN,AP_SAT>"), 28.0);
  EXPECT_EQ(fixed(0.1, "ap_fixed<4,-2>"), 6.0 / 64);   // 6.4 LSB
  EXPECT_EQ(fixed(0.2, "ap_fixed<4,-2>"), -4.0 / 64);  // 12.8 LSB -> 12 -> wraps to 12 - 16
  EXPECT_EQ(fixed_max(Format::parse("ap_ufixed<4,-2>")), 15.0 / 64);
}

TEST(Hls4mlFormats, SpellingsParseToTheSameFormatsAndRoundTrip) {
  // The formats toptag had keep their canonical text, which checkpoints store.
  EXPECT_EQ(Format::parse("fixed<16,6>").str(), "fixed<16,6,TRN,WRAP>");
  EXPECT_EQ(Format::parse("ap_fixed<16,6>").str(), "fixed<16,6,TRN,WRAP>");
  EXPECT_EQ(Format::parse("fixed<8,3,RND_CONV,SAT>").str(), "fixed<8,3,RND_CONV,SAT>");
  // hls4ml's spelling, with or without spaces, in any case, with N = 0.
  EXPECT_EQ(Format::parse("ap_fixed<16,6,AP_RND,AP_SAT>").str(), "fixed<16,6,RND,SAT>");
  EXPECT_EQ(Format::parse("ap_fixed<16, 6, AP_RND_CONV, AP_SAT_SYM, 0>").str(), "fixed<16,6,RND_CONV,SAT_SYM>");
  EXPECT_EQ(Format::parse("ap_ufixed<8,3>").str(), "ufixed<8,3,TRN,WRAP>");
  EXPECT_EQ(Format::parse("ap_ufixed<8,0,ap_rnd_min_inf,ap_sat_zero>").str(), "ufixed<8,0,RND_MIN_INF,SAT_ZERO>");
  for (const char* sign : {"ap_fixed", "ap_ufixed"})
    for (const char* q :
         {"AP_TRN", "AP_TRN_ZERO", "AP_RND", "AP_RND_ZERO", "AP_RND_MIN_INF", "AP_RND_INF", "AP_RND_CONV"})
      for (const char* o : {"AP_WRAP", "AP_SAT", "AP_SAT_ZERO", "AP_SAT_SYM"}) {
        const std::string spec = std::string(sign) + "<10,3," + q + "," + o + ">";
        const Format f = Format::parse(spec);
        EXPECT_EQ(f.str(), std::string(sign + 3) + "<10,3," + (q + 3) + "," + (o + 3) + ">");
        const Format again = Format::parse(f.str());
        EXPECT_EQ(again.str(), f.str());
        EXPECT_EQ(again.rounding, f.rounding);
        EXPECT_EQ(again.overflow, f.overflow);
      }
}

TEST(Hls4mlFormats, ParseErrorsNameWhatIsWrong) {
  const std::pair<const char*, const char*> cases[] = {
      {"ap_fixed<8,3,AP_RNE>", "unknown rounding mode 'AP_RNE'"},
      {"ap_fixed<8,3,AP_SAT>", "an overflow mode: rounding comes first"},
      {"ap_fixed<8,3,AP_RND,AP_CLAMP>", "unknown overflow mode 'AP_CLAMP'"},
      {"ap_fixed<8,3,AP_RND,AP_WRAP_SM>", "'AP_WRAP_SM' (sign-magnitude wrap) is not supported"},
      {"ap_fixed<8,3,AP_RND,AP_WRAP,2>", "N = 2 saturation bits are not supported"},
      {"ap_fixed<0,0>", "W must be in [2, 32]"},
      {"ap_fixed<-4,2>", "W must be in [2, 32]"},
      {"ap_fixed<33,6>", "W must be in [2, 32]"},
      {"ap_ufixed<32,6>", "W must be in [1, 31] for unsigned"},
      {"ap_int<0>", "W must be in [2, 32]"},
      {"ap_uint<0>", "W must be in [1, 31]"},
      {"ap_int<64>", "W must be in [2, 32]"},
      {"ap_int<8,3>", "ap_int takes <W>"},
      {"ap_fixed<8>", "takes <W,I"},
      {"ap_fixed<8,65>", "I must be in [-64, 64]"},
      {"ap_fixed<8,x>", "'x' is not an integer"},
  };
  for (const auto& c : cases) {  // no structured binding: clang 14 cannot capture one in a lambda
    const std::string error = testing::error_of([&] { Format::parse(c.first); });
    EXPECT_NE(error.find(c.second), std::string::npos) << c.first << ": " << error;
  }
}

TEST(Hls4mlFormats, UnsignedWeightsAreRefusedUnsignedActivationsAccepted) {
  EXPECT_NE(testing::error_of([] { make_quantization("ap_ufixed<8,3>", "", "masked"); }).find("unsigned"),
            std::string::npos);
  EXPECT_THROW(make_quantization("ap_uint<8>", "", "masked"), Error);
  const QuantizationConfig c = make_quantization("ap_fixed<8,3,AP_RND,AP_SAT>", "ap_ufixed<8,3>", "masked");
  ASSERT_TRUE(c.activations);
  EXPECT_EQ(c.activations->str(), "ufixed<8,3,TRN,WRAP>");
}

TEST(BlockFloatingPoint, HandComputedBlocks) {
  const Format f = Format::parse("bfp<5,2,4>");
  std::vector<int64_t> m(4);
  // max 1.0 -> e = 0, step 2^(0+1-2) = 0.5: 1.0 -> 2, 0.3 -> 0.6 -> 1, -0.6 -> -1.2 -> -1, 0 -> 0.
  EXPECT_EQ(bfp_block_ref(std::vector<double>{1.0, 0.3, -0.6, 0.0}, f, m), 0);
  EXPECT_EQ(m, (std::vector<int64_t>{2, 1, -1, 0}));
  // 1.9 / 0.5 = 3.8 rounds to 4, saturates at 2^M - 1 = 3 (1.5); 0.25 / 0.5 = 0.5 ties to even 0;
  // 0.75 / 0.5 = 1.5 ties to even 2.
  EXPECT_EQ(bfp_block_ref(std::vector<double>{1.9, 0.25, 0.75, -1.0}, f, m), 0);
  EXPECT_EQ(m, (std::vector<int64_t>{3, 0, 2, -2}));
  // A zero block: all mantissas 0.
  EXPECT_EQ(bfp_block_ref(std::vector<double>{0, 0, 0, 0}, f, m), bfp_exponent_min(f));
  EXPECT_EQ(m, (std::vector<int64_t>{0, 0, 0, 0}));
  // Subnormal: max 2^-20 is below 2^e_min = 2^-15: the exponent clamps and small values flush to 0.
  EXPECT_EQ(bfp_block_ref(std::vector<double>{std::ldexp(1.0, -20), std::ldexp(3.0, -16), 0, 0}, f, m), -15);
  EXPECT_EQ(m, (std::vector<int64_t>{0, 3, 0, 0}));  // the step is 2^(-15+1-2) = 2^-16: 2^-20 -> 0, 3*2^-16 -> 3
  // Above the range: the exponent clamps at e_max = 15 and values saturate at 3 * 2^14.
  EXPECT_EQ(bfp_block_ref(std::vector<double>{1e9, 1.0, 0, 0}, f, m), 15);
  EXPECT_EQ(m[0], 3);
  EXPECT_EQ(bfp_max_magnitude(f), 3 * std::ldexp(1.0, 14));
}

TEST(BlockFloatingPoint, PresetsAreTheDocumentedFormats) {
  EXPECT_EQ(Format::parse("ms-fp8").str(), "ms-fp8");
  const Format fp8 = Format::parse("MS-FP8");
  EXPECT_EQ(fp8.exponent_bits, 5);
  EXPECT_EQ(fp8.mantissa_bits, 2);
  EXPECT_EQ(fp8.block, 128);
  EXPECT_EQ(Format::parse("msfp12").block, 16);
  EXPECT_EQ(Format::parse("mxint8").mantissa_bits, 7);
  EXPECT_EQ(Format::parse("bfp<8,7,32>").str(), "mxint8");
  EXPECT_THROW(Format::parse("float7"), Error);
  EXPECT_THROW(Format::parse("fixed<40,6>"), Error);
  EXPECT_THROW(Format::parse("fixed<8,3,RNE>"), Error);
}

// Every format, through the tensor quantizer used in the forward pass.
const char* const kAllFormats[] = {"fixed<8,3,RND,SAT>",
                                   "fixed<6,2>",
                                   "fixed<16,6,RND_CONV,WRAP>",
                                   "ap_fixed<7,2,AP_RND_INF,AP_SAT_SYM>",
                                   "ap_fixed<8,3,AP_RND_MIN_INF,AP_SAT_ZERO>",
                                   "ap_fixed<5,1,AP_TRN_ZERO>",
                                   "ap_ufixed<6,1,AP_RND_ZERO,AP_SAT_ZERO>",
                                   "ap_uint<4>",
                                   "ms-fp8",
                                   "ms-fp9",
                                   "msfp12",
                                   "msfp16",
                                   "mxint8",
                                   "bfp<3,1,5>",
                                   "int8"};

TEST(Quantizers, TensorPathMatchesTheScalarReferences) {
  Rng rng(2);
  Tensor w = testing::random_tensor({6, 20, 3, 3}, rng, 0.7);  // 20 channels: partial blocks for B = 16, 128
  for (const char* spec : kAllFormats) {
    const Format f = Format::parse(spec);
    Tensor y = Tensor::empty(w.shape());
    quantize_tensor(f, true, w, y, nullptr);
    const AxisLayout l = weight_layout(w.shape());
    for (int64_t o = 0; o < l.outer; ++o)
      for (int64_t i = 0; i < l.inner; ++i)
        for (int64_t a0 = 0; a0 < l.axis; a0 += (f.kind == FormatKind::bfp ? f.block : l.axis)) {
          const int64_t a1 = f.kind == FormatKind::bfp ? std::min<int64_t>(l.axis, a0 + f.block) : l.axis;
          std::vector<double> block;
          for (int64_t a = a0; a < a1; ++a) block.push_back(w.data()[(o * l.axis + a) * l.inner + i]);
          std::vector<int64_t> m(block.size());
          const int e = f.kind == FormatKind::bfp ? bfp_block_ref(block, f, m) : 0;
          for (size_t k = 0; k < block.size(); ++k) {
            double want;
            if (f.kind == FormatKind::fixed)
              want = fixed_ref(block[k], f);
            else if (f.kind == FormatKind::bfp)
              want = std::ldexp(static_cast<double>(m[k]), e + 1 - f.mantissa_bits);
            else
              continue;  // int8 scales are per output channel: checked below
            ASSERT_EQ(y.data()[(o * l.axis + a0 + static_cast<int64_t>(k)) * l.inner + i], static_cast<float>(want))
                << spec;
          }
        }
  }
  // int8 per channel by hand: [0.5, -1.27, 0.01] -> scale 0.01 -> q = [50, -127, 1].
  Tensor c = Tensor::from({1, 3}, std::vector<float>{0.5f, -1.27f, 0.01f});
  Tensor y = Tensor::empty(c.shape());
  quantize_tensor(Format::parse("int8"), true, c, y, nullptr);
  const EncodedTensor e = encode_weight(Format::parse("int8"), c);
  EXPECT_EQ(e.integers, (std::vector<int32_t>{50, -127, 1}));
  EXPECT_NEAR(e.scales[0], 0.01f, 1e-7);
  EXPECT_NEAR(y.data()[1], -1.27f, 1e-6);
}

TEST(Quantizers, IdempotentAndEncodingsDecodeExactly) {
  Rng rng(3);
  Tensor w = testing::random_tensor({8, 40, 3, 3}, rng, 2.0);
  w.data()[5] = 0;
  for (int k = 0; k < 16; ++k) w.data()[100 + k] = 1e-7f;  // a near-subnormal stretch
  for (const char* spec : kAllFormats) {
    const Format f = Format::parse(spec);
    Tensor once = Tensor::empty(w.shape()), twice = Tensor::empty(w.shape());
    quantize_tensor(f, true, w, once, nullptr);
    quantize_tensor(f, true, once, twice, nullptr);
    testing::expect_close(twice, once, std::string("q(q(x)) for ") + spec, kExact, kExact);
    testing::expect_close(decode_weight(f, encode_weight(f, w), w.shape()), once, std::string("decode for ") + spec,
                          kExact, kExact);
  }
}

// Jet images are mostly exact zeros: whole blocks are zero, and a few values are tiny. A block whose
// max is 0 or subnormal gets the smallest exponent, where a float step 2^(e+1-M) has no finite
// reciprocal for 8-bit exponents (issue: msfp12/msfp16/mxint8 turned sparse inputs into NaN).
const char* const kBfpFormats[] = {"ms-fp8", "ms-fp9", "msfp12", "msfp16", "mxint8", "bfp<8,20,16>", "bfp<8,23,4>"};

// Shape (2, 300, 4, 4): read as activations (N,C,H,W) or weights (K,C,R,S) the layout is [2, 300, 16],
// so B = 128 has two full blocks and a partial one. About 2% of the values are nonzero, of every size
// from 10 down to the smallest subnormal float; the first blocks of channel column 0..4 hold only one
// tiny value each, so their max is tiny.
Tensor sparse_tensor(Rng& rng) {
  Tensor x = Tensor::zeros({2, 300, 4, 4});
  const float tiny[] = {std::numeric_limits<float>::denorm_min(), 3e-41f, std::numeric_limits<float>::min(), 1e-30f,
                        std::ldexp(1.0f, -130)};
  for (int64_t k = 0; k < x.numel(); ++k) {
    if (rng.uniform() > 0.02) continue;
    const double size = rng.uniform() < 0.3 ? tiny[rng.below(5)] : std::exp(rng.uniform(-12.0, 2.3));
    x.data()[k] = static_cast<float>(rng.uniform() < 0.5 ? -size : size);
  }
  for (int64_t i = 0; i < 5; ++i) {  // [n = 0, channels 0..127, pixel i]: zero but one tiny value
    for (int64_t c = 0; c < 128; ++c) x.data()[c * 16 + i] = 0;
    x.data()[(7 + i) * 16 + i] = (i % 2 ? -1.0f : 1.0f) * tiny[i];
  }
  return x;
}

// y must equal bfp_block_ref block by block (exactly: every m * 2^(e+1-M) is a float), and the
// exponents, if given, the reference's.
void expect_bfp_matches_reference(const Format& f, const Tensor& x, const Tensor& y, const int8_t* exponents,
                                  const std::string& what) {
  const AxisLayout l = weight_layout(x.shape());
  const int64_t blocks = (l.axis + f.block - 1) / f.block;
  for (int64_t o = 0; o < l.outer; ++o)
    for (int64_t b = 0; b < blocks; ++b)
      for (int64_t i = 0; i < l.inner; ++i) {
        const int64_t a0 = b * f.block, a1 = std::min<int64_t>(l.axis, a0 + f.block);
        auto at = [&](int64_t a) { return (o * l.axis + a) * l.inner + i; };
        std::vector<double> block;
        for (int64_t a = a0; a < a1; ++a) block.push_back(x.data()[at(a)]);
        std::vector<int64_t> m(block.size());
        const int e = bfp_block_ref(block, f, m);
        if (exponents) {
          ASSERT_EQ(exponents[(o * blocks + b) * l.inner + i], e) << what;
        }
        for (int64_t a = a0; a < a1; ++a) {
          const double want = std::ldexp(static_cast<double>(m[a - a0]), e + 1 - f.mantissa_bits);
          ASSERT_EQ(y.data()[at(a)], static_cast<float>(want))
              << what << ": x = " << x.data()[at(a)] << " at [" << o << ", " << a << ", " << i << "]";
        }
      }
}

TEST(Quantizers, SparseInputsMatchTheScalarReferenceInEveryBfpFormat) {
  Rng rng(9);
  const Tensor x = sparse_tensor(rng);
  for (const char* spec : kBfpFormats) {
    const Format f = Format::parse(spec);
    for (bool is_weight : {false, true}) {
      Tensor y = Tensor::empty(x.shape()), ok = Tensor::empty(x.shape());
      quantize_tensor(f, is_weight, x, y, &ok);
      expect_bfp_matches_reference(f, x, y, nullptr, std::string(spec) + (is_weight ? " weights" : " activations"));
      for (float v : ok.span()) ASSERT_EQ(v, 1.0f) << spec;  // everything here is in range
    }
    const EncodedTensor e = encode_weight(f, x);
    expect_bfp_matches_reference(f, x, decode_weight(f, e, x.shape()), e.exponents.data(),
                                 std::string("decode(encode) for ") + spec);
    const int32_t top = (1 << f.mantissa_bits) - 1;
    for (int32_t m : e.integers) ASSERT_LE(std::abs(m), top) << spec;
  }
}

TEST(Quantizers, SparseAndTinyInputsStayFiniteInFixedAndInt8) {
  Rng rng(10);
  Tensor x = sparse_tensor(rng);
  // Output channel 1 holds only subnormal values: its int8 scale max |w| / 127 is below the float range.
  for (int64_t k = 300 * 16; k < x.numel(); ++k) x.data()[k] = x.data()[k] != 0 ? 1e-44f : 0.0f;
  for (const char* spec : {"fixed<8,3,RND,SAT>", "fixed<16,6>", "int8"}) {
    const Format f = Format::parse(spec);
    Tensor y = Tensor::empty(x.shape());
    quantize_tensor(f, true, x, y, nullptr);
    for (float v : y.span()) ASSERT_TRUE(std::isfinite(v)) << spec;
    const EncodedTensor e = encode_weight(f, x);
    testing::expect_close(decode_weight(f, e, x.shape()), y, std::string("decode(encode) for ") + spec, kExact, kExact);
    if (f.kind == FormatKind::int8) {
      for (int32_t q : e.integers) ASSERT_LE(std::abs(q), 127);
    }
  }
  // An int8 activation range narrower than the smallest float step still quantizes to finite values.
  for (const AffineRange r : {AffineRange{0.0f, 1e-44f}, AffineRange{-1e-44f, 0.0f}, AffineRange{0.0f, 0.0f}}) {
    EXPECT_GT(r.scale(), 0.0f);
    EXPECT_TRUE(std::isfinite(1.0f / r.scale()));
    Tensor y = Tensor::empty(x.shape());
    quantize_tensor(Format::parse("int8"), false, x, y, nullptr, &r);
    for (float v : y.span())
      ASSERT_TRUE(std::isfinite(v)) << "int8 activations over [" << r.min << ", " << r.max << "]";
  }
}

TEST(Quantizers, Int8ActivationsAffineOverTheObservedRange) {
  const AffineRange r{0.0f, 2.55f};
  EXPECT_NEAR(r.scale(), 0.01f, 1e-8);
  EXPECT_EQ(r.zero_point(), 0);
  Tensor x = Tensor::from({1, 4}, std::vector<float>{1.234f, 3.0f, -0.5f, 0.0f});
  Tensor y = Tensor::empty(x.shape()), ok = Tensor::empty(x.shape());
  quantize_tensor(Format::parse("int8"), false, x, y, &ok, &r);
  EXPECT_NEAR(y.data()[0], 1.23f, 1e-6);
  EXPECT_NEAR(y.data()[1], 2.55f, 1e-6);  // saturates...
  EXPECT_EQ(ok.data()[1], 0.0f);          // ...and is masked
  EXPECT_EQ(y.data()[2], 0.0f);
  EXPECT_EQ(ok.data()[2], 0.0f);
  EXPECT_EQ(ok.data()[0], 1.0f);
  EXPECT_THROW(quantize_tensor(Format::parse("int8"), false, x, y, &ok, nullptr), Error);
}

TEST(StraightThrough, MaskedZeroesOutOfRangeIdentityPassesAll) {
  const Format f = Format::parse("fixed<4,2,RND,SAT>");  // range [-2, 1.75]
  const auto q = [&](const Tensor& x, Tensor& y, Tensor& ok) { quantize_tensor(f, true, x, y, &ok); };
  const std::vector<float> values = {-3.0f, 0.3f, 1.6f, 2.5f};
  for (SteMode mode : {SteMode::masked, SteMode::identity}) {
    Var x(Tensor::from({2, 2}, values), true);
    Var y = fake_quantize(x, q, mode);
    EXPECT_EQ(y.value().data()[0], -2.0f);
    EXPECT_EQ(y.value().data()[1], 0.25f);
    backward(y, Tensor::full({2, 2}, 1.0f));
    const std::vector<float> want =
        mode == SteMode::masked ? std::vector<float>{0, 1, 1, 0} : std::vector<float>{1, 1, 1, 1};
    for (int i = 0; i < 4; ++i) EXPECT_EQ(x.grad().data()[i], want[i]) << i;
  }
  // The identity STE through the generic gradient checker: d/dx of sum(q(x) * r) taken as r.
  Rng rng(4);
  Tensor x = testing::random_tensor({3, 4}, rng, 0.5);
  Var xv(x, true);
  Tensor r = testing::random_tensor({3, 4}, rng);
  backward(fake_quantize(xv, q, SteMode::identity), r);
  testing::expect_close(xv.grad(), r, "identity STE gradient", kExact, kExact);
}

TEST(Folding, FoldedModelMatchesTheUnfoldedOneInEvalMode) {
  ResNet model(ResNetConfig{"resnet18", 1, 8, 16, 2}, 5);
  Rng rng(6);
  for (auto& b : model.state().buffers)  // non-trivial running statistics
    for (float& v : b.tensor->span())
      v = b.name.find("var") != std::string::npos ? 0.5f + static_cast<float>(rng.uniform())
                                                  : static_cast<float>(0.2 * rng.normal());
  for (auto& p : model.state().parameters)
    if (p.name.find("bn") != std::string::npos || p.name.find("downsample.1") != std::string::npos)
      for (float& v : p.var->value().span()) v += static_cast<float>(0.3 * rng.normal());
  model.set_training(false);
  NoGradGuard no_grad;
  Tensor images = testing::random_tensor({4, 1, 24, 24}, rng);
  Tensor before = model.forward(Var(images)).value().clone();
  model.fold_batchnorm();
  EXPECT_TRUE(model.folded());
  testing::expect_close(model.forward(Var(images)).value(), before, "folded vs unfolded logits", kFoldTolerance,
                        kFoldTolerance);
  // The folded state has conv biases and no batch-norm tensors.
  StateList s = model.state();
  EXPECT_TRUE(s.buffers.empty());
  bool has_bias = false;
  for (auto& p : s.parameters) has_bias = has_bias || p.name == "layer1.0.conv1.bias";
  EXPECT_TRUE(has_bias);
}

TEST(QuantizedModel, CheckpointReproducesTheFakeQuantForwardExactly) {
  const std::string path = std::filesystem::temp_directory_path() / ("toptag_q_" + std::to_string(::getpid()) + ".h5");
  Tagger t;
  t.model = std::make_unique<ResNet>(ResNetConfig{"resnet10", 1, 8, 16, 2}, 7);
  auto config = std::make_shared<QuantizationConfig>();
  config->weights = Format::parse("ms-fp8");
  config->activations = Format::parse("msfp12");
  attach_quantization(*t.model, config);
  t.quantization = config;
  Rng rng(8);
  Tensor images = testing::random_tensor({3, 1, 20, 20}, rng);
  NoGradGuard no_grad;
  t.model->set_training(false);
  Tensor want = t.model->forward(Var(images)).value().clone();
  save_tagger(path, t);
  Tagger loaded = load_tagger(path);
  ASSERT_TRUE(loaded.quantized());
  EXPECT_EQ(loaded.quantization->describe(), config->describe());
  loaded.model->set_training(false);
  testing::expect_close(loaded.model->forward(Var(images)).value(), want, "reloaded quantized logits", kExact, kExact);
  // Weights quantized once for inference (predict, serve) give the very same logits.
  freeze_for_inference(loaded);
  testing::expect_close(loaded.model->forward(Var(images)).value(), want, "frozen quantized logits", kExact, kExact);
  // The stored integers are the quantized weight exactly.
  H5Id f = h5_open(path);
  std::vector<int64_t> ints = h5_read_int64(f.get(), "quantized/layer1.0.conv1/integers", path);
  std::vector<int64_t> exps = h5_read_int64(f.get(), "quantized/layer1.0.conv1/exponents", path);
  EncodedTensor e;
  e.integers.assign(ints.begin(), ints.end());
  e.exponents.assign(exps.begin(), exps.end());
  const Tensor w = h5_read_tensor(f.get(), "layer1.0.conv1.weight", path);
  Tensor q = Tensor::empty(w.shape());
  quantize_tensor(config->weights, true, w, q, nullptr);
  testing::expect_close(decode_weight(config->weights, e, w.shape()), q, "stored encoding", kExact, kExact);
  std::filesystem::remove(path);
}

TEST(QuantizedModel, Hls4mlFormatsRoundTripThroughACheckpointAndTraining) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("toptag_hls_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  {  // Post-training: every new mode is stored by name and reloads to the same logits and integers.
    Tagger t;
    t.model = std::make_unique<ResNet>(ResNetConfig{"resnet10", 1, 8, 16, 2}, 11);
    auto config = std::make_shared<QuantizationConfig>(
        make_quantization("ap_fixed<8,1,AP_RND_INF,AP_SAT_SYM>", "ap_ufixed<8,3,AP_RND_CONV,AP_SAT_ZERO>", "masked"));
    attach_quantization(*t.model, config);
    t.quantization = config;
    Rng rng(12);
    Tensor images = testing::random_tensor({2, 1, 20, 20}, rng);
    NoGradGuard no_grad;
    t.model->set_training(false);
    Tensor want = t.model->forward(Var(images)).value().clone();
    const std::string path = (dir / "q.h5").string();
    save_tagger(path, t);
    Tagger loaded = load_tagger(path);
    ASSERT_TRUE(loaded.quantized());
    EXPECT_EQ(loaded.quantization->describe(),
              "weights fixed<8,1,RND_INF,SAT_SYM>, activations ufixed<8,3,RND_CONV,SAT_ZERO>, masked STE");
    loaded.model->set_training(false);
    testing::expect_close(loaded.model->forward(Var(images)).value(), want, "reloaded logits", kExact, kExact);
    H5Id f = h5_open(path);
    const std::vector<int64_t> ints = h5_read_int64(f.get(), "quantized/layer1.0.conv1/integers", path);
    for (int64_t q : ints) ASSERT_LE(std::abs(q), 127);  // SAT_SYM: never -128
  }
  // Quantization-aware training with unsigned activations, as hls4ml configures ReLU outputs.
  GeneratorOptions g;
  g.seed = 13;
  generate_file((dir / "jets.h5").string(), 200, g);
  TrainConfig c;
  c.train_path = c.val_path = (dir / "jets.h5").string();
  c.output_dir = (dir / "qat").string();
  c.arch = "resnet10";
  c.width = 4;
  c.hidden = 8;
  c.images.size = 16;
  c.epochs = 1;
  c.quantize = "ap_fixed<8,3,AP_RND,AP_SAT>";
  c.quantize_activations = "ap_ufixed<8,3>";
  const TrainResult run = train(c, nullptr);
  const Tagger trained = load_tagger(run.best_checkpoint);
  ASSERT_TRUE(trained.quantized());
  EXPECT_EQ(trained.quantization->describe(),
            "weights fixed<8,3,RND,SAT>, activations ufixed<8,3,TRN,WRAP>, masked STE");
  std::filesystem::remove_all(dir);
}

TEST(QuantizedModel, AccuracyDropsUnderAnAggressiveFormatAndRecoversWithFineTuning) {
  // Generated jets, a small ResNet trained briefly in float, quantized to a 1-bit-magnitude block
  // floating point (post-training: accuracy drops), then fine-tuned with quantization in the loop.
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("toptag_qat_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  GeneratorOptions g;
  g.seed = 21;
  generate_file((dir / "train.h5").string(), 3000, g);
  g.seed = 22;
  generate_file((dir / "val.h5").string(), 1000, g);
  TrainConfig c;
  c.train_path = (dir / "train.h5").string();
  c.val_path = (dir / "val.h5").string();
  c.output_dir = (dir / "float").string();
  c.arch = "resnet10";
  c.width = 8;
  c.hidden = 32;
  c.images.size = 24;
  c.epochs = 3;
  const TrainResult float_run = train(c, nullptr);

  JetFile val(c.val_path);
  InferenceOptions io;
  io.show_progress = false;
  auto accuracy_of = [&](const std::string& checkpoint) {
    Tagger t = load_tagger(checkpoint);
    const Predictions p = run_inference(*t.model, val, c.images, io).predictions;
    return accuracy(p.score, p.label);
  };
  const double float_accuracy = accuracy_of(float_run.best_checkpoint);
  EXPECT_GT(float_accuracy, 0.8);

  Tagger q = load_tagger(float_run.best_checkpoint);
  auto config = std::make_shared<QuantizationConfig>();
  config->weights = Format::parse(kAggressive);
  attach_quantization(*q.model, config);
  q.quantization = config;
  save_tagger((dir / "ptq.h5").string(), q);
  const double ptq_accuracy = accuracy_of((dir / "ptq.h5").string());
  // A clear drop on the same 1000 jets (paired, so far beyond their ~0.01 sampling noise).
  constexpr double kMinimumDrop = 0.02;
  EXPECT_LT(ptq_accuracy, float_accuracy - kMinimumDrop);

  TrainConfig qat = c;
  qat.output_dir = (dir / "qat").string();
  qat.init_path = float_run.best_checkpoint;
  qat.quantize = kAggressive;
  qat.lr = 1e-4;
  qat.epochs = 2;
  const TrainResult qat_run = train(qat, nullptr);
  const double qat_accuracy = accuracy_of(qat_run.best_checkpoint);
  // Fine-tuning wins back most of what quantization lost (a fixed margin over post-training accuracy
  // would demand more than the whole drop when the drop is small; float summation order moves the
  // result by about a percent on this 1000-jet set).
  constexpr double kRecoveredFraction = 0.6;
  EXPECT_GT(qat_accuracy - ptq_accuracy, kRecoveredFraction * (float_accuracy - ptq_accuracy));
  std::fprintf(stderr, "accuracy: float %.4f, %s post-training %.4f, fine-tuned %.4f\n", float_accuracy, kAggressive,
               ptq_accuracy, qat_accuracy);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace toptag
