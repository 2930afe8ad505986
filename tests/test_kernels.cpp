// toptag's own inference kernels (nn/kernels/) against their references, on every instruction set
// this CPU runs (ref everywhere, avx2 and avx512 where present): the convolution tile with its output
// stage over the shapes ResNet uses and the edges (1 and 3 input channels, 7x7 maps, odd sizes,
// channel counts that are not a multiple of the tile, batch 1 and 64), and the NHWC pools.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "nn/gemm.h"
#include "nn/kernels/packed_conv.h"
#include "nn/kernels/tile_driver.h"
#include "nn/kernels/tiled_gemm.h"
#include "nn/kernels/winograd.h"
#include "nn/ops/layout.h"
#include "nn/parallel.h"
#include "testing.h"

namespace toptag {
namespace {

struct ConvCase {
  int64_t n, c, h, w, k;
  int kernel, stride, pad;
  int kernel_w = 0;  // the kernel's width where it is not square (0: square)

  int width() const { return kernel_w ? kernel_w : kernel; }
};

void PrintTo(const ConvCase& c, std::ostream* os) {
  *os << c.n << "x" << c.c << "x" << c.h << "x" << c.w << " -> " << c.k << " " << c.kernel << "x" << c.width() << "/"
      << c.stride << " pad " << c.pad;
}

class PackedConvVsReference : public ::testing::TestWithParam<ConvCase> {};

TEST_P(PackedConvVsReference, EveryIsaEveryOutputStage) {
  const ConvCase c = GetParam();
  Rng rng(7);
  const Tensor x = testing::random_tensor({c.n, c.h, c.w, c.c}, rng);
  const double fan_in = static_cast<double>(c.c * c.kernel * c.width());
  const Tensor w = testing::random_tensor({c.k, c.c, c.kernel, c.width()}, rng, 1.0 / std::sqrt(fan_in));
  const Tensor b = testing::random_tensor({c.k}, rng);
  const Conv2dParams params{c.stride, c.pad};
  const Tensor plain = conv_nhwc_ref(x, w, nullptr, params, nullptr, false);
  const Tensor residual = testing::random_tensor(plain.shape(), rng);
  for (Isa isa : testing::isas_here()) {
    SCOPED_TRACE(isa_name(isa));
    const PackedConv bare = pack_conv(w, nullptr, params, isa);
    const PackedConv biased = pack_conv(w, &b, params, isa);
    testing::expect_close(conv_nhwc(bare, x, nullptr, false), plain, "conv", 1e-4, 1e-5);
    testing::expect_close(conv_nhwc(biased, x, nullptr, true), conv_nhwc_ref(x, w, &b, params, nullptr, true),
                          "conv + bias, ReLU", 1e-4, 1e-5);
    testing::expect_close(conv_nhwc(biased, x, &residual, true), conv_nhwc_ref(x, w, &b, params, &residual, true),
                          "conv + bias + residual, ReLU", 1e-4, 1e-5);
    testing::expect_close(conv_nhwc(bare, x, &residual, false), conv_nhwc_ref(x, w, nullptr, params, &residual, false),
                          "conv + residual", 1e-4, 1e-5);
    testing::expect_same_over_residual([&](const Tensor* r, Output to) { return conv_nhwc(biased, x, r, true, to); },
                                       residual, "conv over its residual");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, PackedConvVsReference,
    ::testing::Values(ConvCase{1, 1, 40, 40, 64, 7, 2, 3},   // the stem at 40x40, one colour
                      ConvCase{2, 3, 23, 17, 40, 7, 2, 3},   // three colours, odd sizes, K not a multiple of 16
                      ConvCase{1, 64, 10, 10, 64, 3, 1, 1},  // layer1's 3x3
                      ConvCase{3, 17, 7, 7, 33, 3, 2, 1},    // 7x7 maps, strided 3x3, odd channels
                      ConvCase{1, 5, 7, 7, 70, 1, 1, 0},     // 1x1: a plain GEMM
                      ConvCase{64, 8, 5, 5, 16, 1, 2, 0},    // batch 64, strided 1x1 downsample
                      ConvCase{64, 16, 3, 3, 48, 3, 1, 1},   // batch 64, 3x3 with padding everywhere
                      // Pixel by pixel (tile_driver.h pixel_major): batches of 8 and more on small maps.
                      ConvCase{16, 512, 2, 2, 512, 3, 1, 1},  // layer4 at 40x40, batch 16: 56% of taps in padding
                      ConvCase{13, 40, 5, 5, 70, 3, 2, 1},    // batch 13 (two tiles a pixel), strided, K off the panel
                      ConvCase{9, 24, 5, 5, 33, 3, 1, 1},     // 5x5 maps, batch 9
                      ConvCase{8, 16, 1, 1, 10, 3, 1, 3},     // pixels whose every tap reads padding
                      ConvCase{1, 2, 2, 2, 4, 7, 2, 3},       // a 2x2 image under the stem: most taps in padding
                      // Few channels (at most 8), read as kernel rows:
                      ConvCase{2, 2, 1, 1, 10, 3, 1, 4},       // padding wider than the kernel: rows all padding
                      ConvCase{3, 4, 9, 6, 20, 5, 3, 2},       // stride 3
                      ConvCase{2, 3, 8, 9, 20, 2, 3, 0},       // stride wider than the kernel
                      ConvCase{2, 2, 9, 11, 24, 3, 2, 1, 5},   // a 3x5 kernel
                      ConvCase{1, 3, 6, 12, 17, 1, 1, 0, 7},   // a 1x7 kernel
                      ConvCase{2, 8, 9, 7, 20, 3, 2, 1},       // 8 channels: the last read as kernel rows
                      ConvCase{2, 9, 9, 7, 20, 3, 2, 1},       // 9 channels: the pointer table
                      ConvCase{1, 512, 2, 2, 512, 3, 1, 1},    // layer4 at 40x40, batch 1: 4 rows, long reduction
                      ConvCase{2, 2048, 1, 1, 1024, 1, 1, 0},  // fc1 as a 1x1 convolution
                      ConvCase{5, 1024, 1, 1, 2, 1, 1, 0}));   // fc2: two output channels

// Winograd F(2x2, 3x3) against the double reference: the same contract, every output stage, odd map
// sizes (a half-empty last tile), 1x1 and 2x2 maps, K and C off the tile sizes, batch 1 and 64. Its
// error, measured on these cases, is below 2e-6 of the largest output (the direct kernel's, 1e-6);
// the bound here is 1e-5.
class WinogradVsReference : public ::testing::TestWithParam<ConvCase> {};

TEST_P(WinogradVsReference, EveryIsaEveryOutputStage) {
  const ConvCase c = GetParam();
  Rng rng(13);
  const Tensor x = testing::random_tensor({c.n, c.h, c.w, c.c}, rng);
  const Tensor w = testing::random_tensor({c.k, c.c, 3, 3}, rng, 1.0 / std::sqrt(9.0 * c.c));
  const Tensor b = testing::random_tensor({c.k}, rng);
  const Tensor plain = conv_nhwc_ref(x, w, nullptr, {1, 1}, nullptr, false);
  const Tensor residual = testing::random_tensor(plain.shape(), rng);
  for (Isa isa : testing::isas_here()) {
    SCOPED_TRACE(isa_name(isa));
    EXPECT_TRUE(winograd_applies(pack_conv(w, nullptr, {1, 1}, isa)));
    const WinogradConv bare = pack_winograd(w, nullptr, isa), biased = pack_winograd(w, &b, isa);
    testing::expect_close_to_max(conv_winograd(bare, x, nullptr, false), plain, "winograd", 1e-5);
    testing::expect_close_to_max(conv_winograd(biased, x, &residual, true),
                                 conv_nhwc_ref(x, w, &b, {1, 1}, &residual, true), "winograd + bias + residual, ReLU",
                                 1e-5);
    testing::expect_close_to_max(conv_winograd(biased, x, nullptr, true),
                                 conv_nhwc_ref(x, w, &b, {1, 1}, nullptr, true), "winograd + bias, ReLU", 1e-5);
    testing::expect_same_over_residual(
        [&](const Tensor* r, Output to) { return conv_winograd(biased, x, r, true, to); }, residual,
        "winograd over its residual");
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, WinogradVsReference,
                         ::testing::Values(ConvCase{1, 64, 10, 10, 64, 3, 1, 1},  // layer1 at 40x40
                                           ConvCase{3, 17, 7, 9, 33, 3, 1, 1},    // odd sizes and channels
                                           ConvCase{2, 5, 1, 1, 8, 3, 1, 1},      // a 1x1 map: one tile, mostly padding
                                           ConvCase{1, 512, 2, 2, 512, 3, 1, 1},  // layer4 at 40x40, one tile
                                           ConvCase{64, 16, 5, 5, 48, 3, 1, 1},   // batch 64, 5x5 maps
                                           ConvCase{1, 32, 28, 28, 40, 3, 1, 1}));  // many tiles, K off the panel

// The stem with the max pool in its output stage gives the bits of the two run one after the other,
// NaN included, whichever way the rows are read (kernel rows for few channels, the pointer table for
// more), on 1 to 3 threads (bands that share out evenly or not) and windows cut by every edge.
TEST(ConvMaxpool, TheBitsOfTheConvolutionThenThePool) {
  struct Case {
    ConvCase conv;
    MaxPool2dParams pool;
  };
  const std::vector<Case> cases = {
      {{1, 3, 224, 224, 64, 7, 2, 3}, {3, 2, 1}},  // the paper's stem
      {{3, 1, 40, 40, 64, 7, 2, 3}, {3, 2, 1}},    // 40x40, batch 3
      {{2, 3, 37, 29, 20, 7, 2, 3}, {3, 2, 1}},    // odd sizes, K off the panel
      {{1, 16, 9, 11, 33, 3, 1, 1}, {2, 2, 0}},    // 16 channels: the pointer table; a 2x2 pool
      {{5, 2, 6, 6, 8, 3, 1, 1}, {3, 3, 1}},       // a stride-3 pool, one band an image
      {{1, 1, 2, 2, 4, 7, 2, 3}, {3, 2, 1}},       // a 1x1 map under the pool
  };
  Rng rng(29);
  for (const Case& c : cases) {
    const ConvCase& v = c.conv;
    SCOPED_TRACE(::testing::PrintToString(v));
    Tensor x = testing::random_tensor({v.n, v.h, v.w, v.c}, rng);
    x.data()[x.numel() / 2] = std::numeric_limits<float>::quiet_NaN();
    const Tensor w = testing::random_tensor({v.k, v.c, v.kernel, v.kernel}, rng, 0.2);
    const Tensor b = testing::random_tensor({v.k}, rng);
    for (Isa isa : testing::isas_here()) {
      SCOPED_TRACE(isa_name(isa));
      const PackedConv cv = pack_conv(w, &b, {v.stride, v.pad}, isa);
      for (bool relu : {false, true}) {
        const Tensor expected = maxpool_nhwc(conv_nhwc(cv, x, nullptr, relu), c.pool);
        for (int threads : {1, 2, 3}) {
          set_num_threads(threads);
          const Tensor fused = conv_nhwc_maxpool(cv, x, relu, c.pool);
          ASSERT_EQ(fused.shape(), expected.shape());
          int64_t differ = 0, nan = 0;
          for (int64_t i = 0; i < fused.numel(); ++i) {
            nan += std::isnan(expected.data()[i]);
            differ += std::memcmp(&fused.data()[i], &expected.data()[i], sizeof(float)) != 0;
          }
          EXPECT_EQ(differ, 0) << "of " << fused.numel() << (relu ? ", ReLU, " : ", ") << threads << " threads";
          EXPECT_GT(nan, 0) << "the NaN did not reach the output";
        }
      }
    }
  }
  set_num_threads(0);
  const PackedConv cv = pack_conv(Tensor::zeros({4, 2, 3, 3}), nullptr, {1, 1}, active_isa());
  EXPECT_NE(testing::error_of([&] {
              conv_nhwc_maxpool(cv, Tensor::zeros({1, 2, 2, 2}), true, {5, 1, 0});
            }).find("smaller than the 5x5 window"),
            std::string::npos);
}

// Writing over a residual that is the convolution's own input would overwrite rows other tiles still
// read: refused, as is writing over a residual that was not given.
TEST(OverResidual, RefusesTheInputAndAMissingResidual) {
  const Tensor x = Tensor::zeros({1, 4, 4, 32});
  const PackedConv cv = pack_conv(Tensor::zeros({32, 32, 1, 1}), nullptr, {1, 0}, active_isa());
  EXPECT_NE(testing::error_of([&] { conv_nhwc(cv, x, &x, true, Output::over_residual); }).find("its own input"),
            std::string::npos);
  EXPECT_NE(testing::error_of([&] { conv_nhwc(cv, x, nullptr, true, Output::over_residual); }).find("not given"),
            std::string::npos);
}

TEST(Winograd, ErrorAgainstTheDirectKernelIsFloatRounding) {
  // Measured, not assumed: the largest difference between the two float32 paths on layer1's shape,
  // relative to the largest output.
  Rng rng(17);
  const Tensor x = testing::random_tensor({8, 10, 10, 64}, rng);
  const Tensor w = testing::random_tensor({64, 64, 3, 3}, rng, 1.0 / 24.0);
  const Tensor direct = conv_nhwc(pack_conv(w, nullptr, {1, 1}, active_isa()), x, nullptr, false);
  const Tensor wino = conv_winograd(pack_winograd(w, nullptr, active_isa()), x, nullptr, false);
  double worst = 0, largest = 0;
  for (int64_t i = 0; i < direct.numel(); ++i) {
    worst = std::max(worst, static_cast<double>(std::abs(direct.data()[i] - wino.data()[i])));
    largest = std::max(largest, static_cast<double>(std::abs(direct.data()[i])));
  }
  RecordProperty("relative_error", std::to_string(worst / largest));  // --gtest_output=xml shows it
  EXPECT_LT(worst / largest, 1e-5) << "worst " << worst << " of " << largest;
  EXPECT_GT(worst, 0.0) << "two summation orders cannot agree bit for bit on 4608-term sums";
}

TEST(PackedConv, ThreadedAndSingleThreadedAgreeBitForBit) {
  // Each output element is summed by one thread in a fixed order, so the thread count changes nothing.
  // Also the stem's kernel rows, whose chunks (some starting inside an image) each thread lays out itself.
  Rng rng(3);
  const Tensor x = testing::random_tensor({4, 20, 20, 32}, rng), stem_x = testing::random_tensor({3, 40, 40, 3}, rng);
  const Tensor w = testing::random_tensor({96, 32, 3, 3}, rng, 0.1),
               stem_w = testing::random_tensor({64, 3, 7, 7}, rng, 0.1);
  for (Isa isa : testing::isas_here()) {
    const PackedConv cv = pack_conv(w, nullptr, {1, 1}, isa), stem = pack_conv(stem_w, nullptr, {2, 3}, isa);
    const int saved = num_threads();
    set_num_threads(1);
    const Tensor one = conv_nhwc(cv, x, nullptr, false), stem_one = conv_nhwc(stem, stem_x, nullptr, false);
    set_num_threads(3);
    const Tensor three = conv_nhwc(cv, x, nullptr, false), stem_three = conv_nhwc(stem, stem_x, nullptr, false);
    set_num_threads(saved);
    for (int64_t i = 0; i < one.numel(); ++i) ASSERT_EQ(one.data()[i], three.data()[i]) << isa_name(isa) << " at " << i;
    for (int64_t i = 0; i < stem_one.numel(); ++i)
      ASSERT_EQ(stem_one.data()[i], stem_three.data()[i]) << isa_name(isa) << " stem at " << i;
  }
}

// Unpacking gives back exactly the weights packed, for K off the panel width and a non-square kernel.
TEST(PackedConv, UnpackGivesBackTheWeights) {
  Rng rng(4);
  const Tensor w = testing::random_tensor({37, 5, 3, 2}, rng);
  for (Isa isa : testing::isas_here()) {
    const Tensor back = unpack_conv_weight(pack_conv(w, nullptr, {1, 0}, isa));
    ASSERT_EQ(back.shape(), w.shape());
    for (int64_t i = 0; i < w.numel(); ++i) ASSERT_EQ(back.data()[i], w.data()[i]) << isa_name(isa) << " at " << i;
  }
}

// The next panel's prefetch is cut among the current panel's tiles: together they ask for every line
// of it once, each within its own reduction steps, and the last panel asks for nothing.
TEST(NextPanel, TheTilesShareTheNextPanelExactly) {
  const std::vector<float> weights(4 * 2048);
  const int64_t panel_bytes = 2048 * sizeof(float), lines = panel_bytes / 64;
  for (int64_t count : {1, 4, 12, 13, 64, 192})
    for (int64_t steps : {lines / 2, lines}) {
      const int64_t mr = 12, tiles = (count + mr - 1) / mr;
      const NextPanel next = next_panel(weights.data(), panel_bytes, 1, 4, count, mr);
      std::vector<int> asked(static_cast<size_t>(lines), 0);
      for (int64_t tile = 0; tile < tiles; ++tile) {
        const PanelPrefetch p = next.slice(tile, steps);
        EXPECT_LE(p.lines, steps * p.lines_per_step) << "count " << count << " tile " << tile;
        const int64_t first =
            (static_cast<const char*>(p.at) - reinterpret_cast<const char*>(weights.data()) - 2 * panel_bytes) / 64;
        for (int64_t l = 0; l < p.lines; ++l) ++asked[static_cast<size_t>(first + l)];
      }
      EXPECT_EQ(std::count(asked.begin(), asked.end(), 1), lines) << "count " << count << " steps " << steps;
    }
  EXPECT_EQ(next_panel(weights.data(), panel_bytes, 3, 4, 64, 12).slice(0, lines).lines, 0);
}

// Pixel by pixel, a tile skips the taps in the padding, which only ever add exact zeros: a batch gives
// bit for bit what its images give one at a time (run in the usual order), on every instruction set.
// And the path is taken where it should be, and not at batch 1 or on maps with little padding.
TEST(PixelMajor, ABatchGivesItsImagesResultsBitForBit) {
  EXPECT_TRUE(pixel_major({512, 512, 3, 3, 1, 1}, {16, 2, 2, 2, 2}));     // layer4 at 40x40: 44% inside
  EXPECT_TRUE(pixel_major({256, 256, 3, 3, 1, 1}, {8, 3, 3, 3, 3}));      // layer3: 60%
  EXPECT_TRUE(pixel_major({128, 128, 3, 3, 1, 1}, {9, 5, 5, 5, 5}));      // layer2: 75%
  EXPECT_FALSE(pixel_major({512, 512, 3, 3, 1, 1}, {7, 2, 2, 2, 2}));     // too few images
  EXPECT_FALSE(pixel_major({64, 64, 3, 3, 1, 1}, {64, 10, 10, 10, 10}));  // 87% inside
  EXPECT_FALSE(pixel_major({64, 64, 1, 1, 1, 0}, {64, 2, 2, 2, 2}));      // a 1x1 convolution reads no padding
  Rng rng(23);
  const Tensor x = testing::random_tensor({11, 3, 3, 24}, rng), w = testing::random_tensor({40, 24, 3, 3}, rng, 0.1);
  const Tensor b = testing::random_tensor({40}, rng), residual = testing::random_tensor({11, 3, 3, 40}, rng);
  for (Isa isa : testing::isas_here()) {
    SCOPED_TRACE(isa_name(isa));
    const PackedConv cv = pack_conv(w, &b, {1, 1}, isa);
    EXPECT_DOUBLE_EQ(conv_nhwc_taps(cv, x), 11.0 * 49);  // of 81 (pixel, tap) pairs on a 3x3 map
    const Tensor batch = conv_nhwc(cv, x, &residual, true);
    int64_t differ = 0;
    for (int64_t n = 0; n < 11; ++n) {
      const Tensor image = testing::rows_of(x, n, n + 1), image_residual = testing::rows_of(residual, n, n + 1);
      EXPECT_DOUBLE_EQ(conv_nhwc_taps(cv, image), 81.0);
      const Tensor one = conv_nhwc(cv, image, &image_residual, true);
      for (int64_t i = 0; i < one.numel(); ++i) differ += one.data()[i] != batch.data()[n * one.numel() + i];
    }
    EXPECT_EQ(differ, 0);
  }
}

TEST(PackedConv, NanPassesTheFusedRelu) {
  Tensor x = Tensor::full({1, 3, 3, 4}, 1.0f);
  x.data()[5] = std::numeric_limits<float>::quiet_NaN();
  for (Isa isa : testing::isas_here()) {
    // K = 2 nr: whole panels (the vector output stage); K = 3: a partial one (the scalar stage).
    for (int64_t K : {int64_t{2} * kernels(isa).nr, int64_t{3}}) {
      const Tensor w = Tensor::full({K, 4, 1, 1}, -1.0f);  // every finite output is negative: ReLU zeroes it
      const Tensor y = conv_nhwc(pack_conv(w, nullptr, {1, 0}, isa), x, nullptr, true);
      for (int64_t k = 0; k < K; ++k) {
        EXPECT_TRUE(std::isnan(y.data()[K + k])) << isa_name(isa) << " K " << K << ": pixel 1 read the NaN";
        EXPECT_EQ(y.data()[k], 0.0f) << isa_name(isa) << " K " << K;
      }
    }
  }
}

TEST(PackedConv, EveryRowAndColumnRemainder) {
  // Every tile height 1..mr (and past it), every panel remainder, the dense-row cut-off (C 8 and 9
  // with a 3x3 kernel), on every path: rows = N * P * Q output pixels of a 1 x W map.
  Rng rng(21);
  for (Isa isa : testing::isas_here()) {
    const KernelSet& ks = kernels(isa);
    for (int64_t rows = 1; rows <= 2 * ks.mr + 1; ++rows)
      for (int64_t K : {int64_t{1}, int64_t{ks.nr - 1}, int64_t{ks.nr + 1}})
        for (int64_t C : {3, 8, 9}) {
          const Tensor x = testing::random_tensor({1, 1, rows, C}, rng);
          const Tensor w = testing::random_tensor({K, C, 3, 3}, rng, 0.2);
          const Tensor b = testing::random_tensor({K}, rng);
          const Tensor expected = conv_nhwc_ref(x, w, &b, {1, 1}, nullptr, true);
          testing::expect_close(conv_nhwc(pack_conv(w, &b, {1, 1}, isa), x, nullptr, true), expected,
                                fmt::format("{} rows {} K {} C {}", isa_name(isa), rows, K, C), 1e-4, 1e-5);
        }
  }
}

// Training's GEMM on the tiles against gemm_ref: every transposition, beta 0 and 1, leading dimensions
// wider than the matrices, on one thread and on two, and shapes across each of the driver's edges: a
// partial panel and a partial tile, several blocks of rows (over 16 tiles), several blocks of k (over
// 256), and one row or column.
TEST(TiledGemm, MatchesTheReferenceAcrossEveryEdge) {
  Rng rng(31);
  const int threads = num_threads();
  const std::array<std::array<int64_t, 3>, 6> shapes = {
      {{1, 1, 1}, {13, 37, 5}, {5, 70, 300}, {400, 33, 17}, {250, 64, 520}, {1, 96, 64}}};
  for (Isa isa : testing::isas_here())
    for (const auto& [M, N, K] : shapes)
      for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb) {
          const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 2, ldc = N + 1;
          const Tensor a = testing::random_tensor({(ta ? K : M) * lda}, rng);
          const Tensor b = testing::random_tensor({(tb ? N : K) * ldb}, rng);
          for (float beta : {0.0f, 1.0f})
            for (int t : {1, 2}) {
              Tensor c = testing::random_tensor({M * ldc}, rng), expected = c.clone();
              if (beta == 0.0f)  // never read with beta 0; the column past N in each row is not C's
                for (int64_t i = 0; i < M; ++i) std::fill_n(c.data() + i * ldc, N, std::nanf(""));
              gemm_ref(ta, tb, M, N, K, 1.0f, a.data(), lda, b.data(), ldb, beta, expected.data(), ldc);
              set_num_threads(t);
              tiled_gemm(isa, ta, tb, M, N, K, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
              set_num_threads(threads);
              testing::expect_close(
                  c, expected,
                  fmt::format("{} {}x{}x{} ta {} tb {} beta {} threads {}", isa_name(isa), M, N, K, ta, tb, beta, t),
                  1e-4, 1e-5);
            }
        }
}

// Adam's update on each instruction set against the reference's division: m and v as the reference's
// up to the rounding of an FMA (in m relative to its two terms, which can cancel); the step within
// 4 ulp of the quotient of the set's own m and v, taken in double. Gradients over 12 decades, zeros
// (v = 0: the divisor is eps alone), one so large that v overflows to inf (the step is then 0), lengths
// across the vector width, and a NaN, which reaches exactly its own parameter.
TEST(AdamKernel, MatchesTheReferenceDivision) {
  Rng rng(41);
  const AdamStep a{0.9f, 0.999f, 1e-3f / 0.1f, 1.0f / std::sqrt(1.0f - 0.999f), 1e-8f, 1.0f};
  const double ulp = std::numeric_limits<float>::epsilon();
  for (Isa isa : testing::isas_here())
    for (int64_t n : {1, 7, 8, 15, 16, 17, 33, 1000}) {
      Tensor g = testing::random_tensor({n}, rng), m = testing::random_tensor({n}, rng, 0.1);
      Tensor v = testing::random_tensor({n}, rng, 0.01);
      for (int64_t j = 0; j < n; ++j) {
        g.data()[j] *= std::pow(10.0f, static_cast<float>(j % 13) - 9.0f);  // 1e-9 .. 1e3
        v.data()[j] = v.data()[j] * v.data()[j];                            // >= 0
        if (j % 5 == 0) g.data()[j] = m.data()[j] = v.data()[j] = 0.0f;
      }
      if (n > 3) g.data()[3] = 1e21f;  // (1 - b2) g^2 overflows
      if (n > 16) g.data()[16] = std::nanf("");
      // w = 0 and no decay: w comes back as the step itself, -step_size * m / (sqrt(v) c + eps).
      const Tensor m0 = m.clone();
      Tensor w = Tensor::zeros({n}), m_ref = m.clone(), v_ref = v.clone(), w_ref = w.clone();
      kernels(isa).adam(a, w.data(), g.data(), m.data(), v.data(), n);
      kernels_ref::adam(a, w_ref.data(), g.data(), m_ref.data(), v_ref.data(), n);
      for (int64_t j = 0; j < n; ++j) {
        const std::string where = fmt::format("{} n {} at {}", isa_name(isa), n, j);
        if (std::isnan(g.data()[j])) {
          EXPECT_TRUE(std::isnan(w.data()[j])) << where;
          continue;
        }
        const double m_terms = std::fabs(a.b1 * m0.data()[j]) + std::fabs((1.0 - a.b1) * g.data()[j]);
        EXPECT_NEAR(m.data()[j], m_ref.data()[j], 2 * ulp * m_terms) << where;
        if (std::isinf(v_ref.data()[j])) {
          EXPECT_EQ(v.data()[j], v_ref.data()[j]) << where;
          EXPECT_EQ(w.data()[j], 0.0f) << where << ": v is inf, the step m / inf is 0";
          continue;
        }
        EXPECT_NEAR(v.data()[j], v_ref.data()[j], 2 * ulp * v_ref.data()[j]) << where;
        const double step = -static_cast<double>(a.step_size) * m.data()[j] /
                            (std::sqrt(static_cast<double>(v.data()[j])) * a.inv_sqrt_bc2 + a.eps);
        EXPECT_NEAR(w.data()[j], step, 4 * ulp * std::fabs(step)) << where;
      }
      EXPECT_TRUE(std::isinf(v_ref.data()[std::min<int64_t>(3, n - 1)]) || n <= 3) << "the overflow case is there";
    }
}

// Weight decay (AdamW) on every set: w * decay less the step, as the reference.
TEST(AdamKernel, DecaysTheWeights) {
  Rng rng(43);
  const AdamStep a{0.9f, 0.999f, 1e-3f, 31.6f, 1e-8f, 0.99f};
  const int64_t n = 100;
  const Tensor g = testing::random_tensor({n}, rng), w0 = testing::random_tensor({n}, rng);
  Tensor w_ref = w0.clone(), m_ref = Tensor::zeros({n}), v_ref = Tensor::zeros({n});
  kernels_ref::adam(a, w_ref.data(), g.data(), m_ref.data(), v_ref.data(), n);
  for (Isa isa : testing::isas_here()) {
    Tensor w = w0.clone(), m = Tensor::zeros({n}), v = Tensor::zeros({n});
    kernels(isa).adam(a, w.data(), g.data(), m.data(), v.data(), n);
    testing::expect_close(w, w_ref, isa_name(isa), 1e-6, 1e-9);
  }
}

// gemm() hands the tiles only what they compute: alpha 1, beta 0 or 1, and work enough to share.
TEST(TiledGemm, TakesOnlyWhatItComputes) {
  EXPECT_TRUE(tiled_gemm_takes(64, 64, 64, 1.0f, 0.0f));
  EXPECT_TRUE(tiled_gemm_takes(64, 64, 64, 1.0f, 1.0f));
  EXPECT_FALSE(tiled_gemm_takes(64, 64, 64, 0.5f, 0.0f));
  EXPECT_FALSE(tiled_gemm_takes(64, 64, 64, 1.0f, 0.5f));
  EXPECT_FALSE(tiled_gemm_takes(64, 64, 0, 1.0f, 0.0f)) << "K 0: C = beta C, OpenBLAS's to do";
  EXPECT_FALSE(tiled_gemm_takes(64, 64, 63, 1.0f, 0.0f)) << "under 2^18 multiply-adds";
}

// A NaN in A reaches exactly its row of C, and one in B exactly its column, as in OpenBLAS.
TEST(TiledGemm, NanReachesItsRowAndColumn) {
  const int64_t M = 30, N = 40, K = 300;
  for (Isa isa : testing::isas_here()) {
    Tensor a = Tensor::full({M * K}, 0.5f), b = Tensor::full({K * N}, 0.25f), c = Tensor::zeros({M * N});
    a.data()[7 * K + 260] = std::numeric_limits<float>::quiet_NaN();  // row 7, in the second block of k
    b.data()[3 * N + 35] = std::numeric_limits<float>::quiet_NaN();   // column 35, in a partial panel
    tiled_gemm(isa, false, false, M, N, K, a.data(), K, b.data(), N, 0.0f, c.data(), N);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j)
        EXPECT_EQ(std::isnan(c.data()[i * N + j]), i == 7 || j == 35) << isa_name(isa) << " " << i << "," << j;
  }
}

TEST(PackedConv, AnEmptyBatchGivesAnEmptyOutput) {
  for (Isa isa : testing::isas_here()) {
    const Tensor w = Tensor::full({8, 4, 3, 3}, 1.0f);
    EXPECT_EQ(conv_nhwc(pack_conv(w, nullptr, {1, 1}, isa), Tensor::zeros({0, 5, 5, 4}), nullptr, true).shape(),
              Shape({0, 5, 5, 8}));
    const Tensor w128 = Tensor::full({8, 128, 3, 3}, 1.0f);
    EXPECT_EQ(conv_winograd(pack_winograd(w128, nullptr, isa), Tensor::zeros({0, 4, 4, 128}), nullptr, true).shape(),
              Shape({0, 4, 4, 8}));
  }
}

TEST(PackedConv, RejectsAnInputOfTheWrongChannels) {
  const PackedConv cv = pack_conv(Tensor::zeros({8, 4, 3, 3}), nullptr, {1, 1}, Isa::ref);
  EXPECT_NE(testing::error_of([&] {
              conv_nhwc(cv, Tensor::zeros({1, 5, 5, 3}), nullptr, false);
            }).find("(N, H, W, 4)"),
            std::string::npos);
}

TEST(NhwcOps, MaxPoolAndAveragePoolMatchTheNchwOps) {
  Rng rng(5);
  const Tensor nchw = testing::random_tensor({2, 5, 9, 7}, rng);
  const Tensor nhwc = nchw_to_nhwc(nchw);
  testing::expect_close(nhwc_to_nchw(nhwc), nchw, "layout round trip", 0, 0);
  const Tensor pooled = maxpool2d(Var(nchw), {3, 2, 1}).value();
  testing::expect_close(nhwc_to_nchw(maxpool_nhwc(nhwc, {3, 2, 1})), pooled, "max pool", 0, 0);
  testing::expect_close(global_avgpool_nhwc(nhwc), global_avgpool(Var(nchw)).value(), "average pool", 1e-6, 1e-7);
}

TEST(Isa, TheActivePathIsOneThisCpuRuns) {
  EXPECT_TRUE(cpu_supports(active_isa()));
  EXPECT_TRUE(cpu_supports(Isa::ref));
  EXPECT_EQ(kernels(active_isa()).isa, active_isa());
  EXPECT_FALSE(describe_isa().empty());
}

}  // namespace
}  // namespace toptag
