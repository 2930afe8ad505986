// Google Benchmark cases for every distinct convolution of ResNet-50 on 40x40 inputs:
//   BM_Conv        the training op (im2col + OpenBLAS), batch 64, forward alone and with backward, in
//                  each activation layout (nhwc: 0 NCHW conv2d, 1 channels-last conv2d_nhwc)
//   BM_PackedConv  the inference kernels (NHWC, packed weights, fused output stage) at batch 1 and 64,
//                  on every instruction set this CPU runs (isa: 0 ref, 1 avx2, 2 avx512)
//   BM_BfpConv     the same shapes on the block floating point integer kernels (ms-fp8: bfp<5,2,128>),
//                  the input's quantization included
//   BM_Int8Conv    the same shapes on the int8 integer kernels (u8 activations with zero point 0, as
//                  after a ReLU, s8 weights in [-127, 127]), the input's quantization included, on the
//                  byte tile (tile:1) and the word tile (tile:2)
#include <benchmark/benchmark.h>

#include <cmath>
#include <vector>

#include "nn/gemm.h"
#include "nn/kernels/bfp.h"
#include "nn/kernels/packed_conv.h"
#include "nn/kernels/tiled_gemm.h"
#include "nn/kernels/winograd.h"
#include "nn/ops/conv2d.h"
#include "nn/ops/conv2d_nhwc.h"
#include "nn/random.h"

using namespace toptag;

namespace {

Tensor random_tensor(const Shape& shape, Rng& rng) {
  Tensor t = Tensor::empty(shape);
  for (float& v : t.span()) v = static_cast<float>(rng.normal());
  return t;
}

// args: C, H, K, kernel, stride, pad, backward, nhwc
void BM_Conv(benchmark::State& state) {
  const int64_t C = state.range(0), H = state.range(1), K = state.range(2);
  const int kernel = static_cast<int>(state.range(3)), stride = static_cast<int>(state.range(4)),
            pad = static_cast<int>(state.range(5));
  const bool with_backward = state.range(6) != 0, nhwc = state.range(7) != 0;
  Rng rng(1);
  Var x(random_tensor(nhwc ? Shape{64, H, H, C} : Shape{64, C, H, H}, rng), with_backward);
  Var w = Var::parameter(random_tensor({K, C, kernel, kernel}, rng));
  const Shape y_shape = conv2d_output_shape({64, C, H, H}, w.shape(), {stride, pad});
  Tensor gy = random_tensor(nhwc ? Shape{64, y_shape[2], y_shape[3], K} : y_shape, rng);
  for (auto _ : state) {
    Var y = nhwc ? conv2d_nhwc(x, w, nullptr, {stride, pad}) : conv2d(x, w, {stride, pad});
    if (with_backward) {
      x.zero_grad();
      backward(y, gy);
    }
    benchmark::DoNotOptimize(y.value().data());
  }
  const double flops = 2.0 * y_shape.numel() * C * kernel * kernel * (with_backward ? 3 : 1);
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

// The packed-kernel cases' args: C, H, K, kernel, stride, pad, batch, isa.
struct PackedArgs {
  int64_t C, H, K, N;
  int kernel, stride, pad;
  Isa isa;

  explicit PackedArgs(const benchmark::State& state)
      : C(state.range(0)),
        H(state.range(1)),
        K(state.range(2)),
        N(state.range(6)),
        kernel(static_cast<int>(state.range(3))),
        stride(static_cast<int>(state.range(4))),
        pad(static_cast<int>(state.range(5))),
        isa(static_cast<Isa>(state.range(7))) {}
};

// Times run() (a convolution returning its output) and reports GFLOP/s of the direct form.
template <class Run>
void time_conv(benchmark::State& state, const PackedArgs& a, Run run) {
  int64_t outputs = 0;
  for (auto _ : state) {
    Tensor y = run();
    outputs = y.numel();
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * outputs * a.C * a.kernel * a.kernel, benchmark::Counter::kIsIterationInvariantRate,
                         benchmark::Counter::kIs1000);
}

// A float layer of the args' shape: a random input, and random weights and bias packed for a.isa.
struct FloatLayer {
  Tensor x;
  PackedConv cv;
};
FloatLayer float_layer(const PackedArgs& a) {
  Rng rng(1);
  const Tensor x = random_tensor({a.N, a.H, a.H, a.C}, rng), w = random_tensor({a.K, a.C, a.kernel, a.kernel}, rng),
               b = random_tensor({a.K}, rng);
  return {x, pack_conv(w, &b, {a.stride, a.pad}, a.isa)};
}

void BM_PackedConv(benchmark::State& state) {
  const PackedArgs a(state);
  if (!cpu_supports(a.isa)) return state.SkipWithError("this CPU cannot run the instruction set");
  const FloatLayer l = float_layer(a);
  time_conv(state, a, [&] { return conv_nhwc(l.cv, l.x, nullptr, true); });
}

// The stem and its max pool (3x3, stride 2): fused (fused 1, conv_nhwc_maxpool) or one after the other
// (0). args: C, H, K, kernel, stride, pad, N, isa, fused.
void BM_ConvMaxpool(benchmark::State& state) {
  const PackedArgs a(state);
  if (!cpu_supports(a.isa)) return state.SkipWithError("this CPU cannot run the instruction set");
  const FloatLayer l = float_layer(a);
  const MaxPool2dParams pool{3, 2, 1};
  if (state.range(8))
    for (auto _ : state) benchmark::DoNotOptimize(conv_nhwc_maxpool(l.cv, l.x, true, pool).data());
  else
    for (auto _ : state) benchmark::DoNotOptimize(maxpool_nhwc(conv_nhwc(l.cv, l.x, nullptr, true), pool).data());
}

// Inputs |normal| (they follow a ReLU).
Tensor relu_inputs(const PackedArgs& a, Rng& rng) {
  Tensor x = random_tensor({a.N, a.H, a.H, a.C}, rng);
  for (float& v : x.span()) v = std::abs(v);
  return x;
}

// Random ms-fp8 mantissas and exponents.
void BM_BfpConv(benchmark::State& state) {
  const PackedArgs a(state);
  if (!cpu_supports(a.isa)) return state.SkipWithError("this CPU cannot run the instruction set");
  Rng rng(1);
  const Tensor x = relu_inputs(a, rng);
  const BlockFormat ms_fp8{2, 128, -15, 15};
  const int64_t taps = a.kernel * a.kernel, blocks = (a.C + 127) / 128;
  std::vector<int32_t> mantissas(static_cast<size_t>(a.K * a.C * taps));
  std::vector<int8_t> exponents(static_cast<size_t>(a.K * blocks * taps));
  for (int32_t& m : mantissas) m = static_cast<int32_t>(rng.below(7)) - 3;
  for (int8_t& e : exponents) e = static_cast<int8_t>(-static_cast<int>(rng.below(6)));
  const Tensor b = random_tensor({a.K}, rng);
  const PackedBfpConv cv =
      pack_conv_bfp({a.K, a.C, a.kernel, a.kernel, mantissas, exponents, ms_fp8}, &b, {a.stride, a.pad}, ms_fp8, a.isa);
  time_conv(state, a, [&] { return conv_nhwc_bfp(cv, x, nullptr, true); });
}

// Random int8 weights; inputs on 0..255 with zero point 0.
void BM_Int8Conv(benchmark::State& state) {
  const PackedArgs a(state);
  if (!cpu_supports(a.isa)) return state.SkipWithError("this CPU cannot run the instruction set");
  Rng rng(1);
  const Tensor x = relu_inputs(a, rng);
  std::vector<int32_t> weights(static_cast<size_t>(a.K * a.C * a.kernel * a.kernel));
  for (int32_t& w : weights) w = static_cast<int32_t>(rng.below(255)) - 127;
  const std::vector<float> scales(static_cast<size_t>(a.K), 0.01f);
  const Tensor b = random_tensor({a.K}, rng);
  if (!int8_tile_takes(kernels(a.isa), weights)) return state.SkipWithError("this instruction set has no int8 tile");
  const PackedBfpConv cv = pack_conv_int8(a.K, a.C, a.kernel, a.kernel, weights, scales, &b, {a.stride, a.pad},
                                          AffineU8{4.0f / 255, 0}, kernels(a.isa));
  const Int8Tile tile = state.range(8) == 2 ? Int8Tile::words : Int8Tile::bytes;
  if (tile == Int8Tile::words && !cv.words) return state.SkipWithError("this instruction set has no int8 word tile");
  time_conv(state, a, [&] { return conv_nhwc_bfp(cv, x, nullptr, true, nullptr, tile); });
}

// args: C, pixels. The block floating point quantizer alone (ms-fp8), on |normal| inputs.
void BM_BfpQuantize(benchmark::State& state) {
  const int64_t C = state.range(0), pixels = state.range(1);
  Rng rng(1);
  Tensor x = random_tensor({pixels, C}, rng);
  for (float& v : x.span()) v = std::abs(v);
  for (auto _ : state) {
    BfpActivations a = quantize_bfp_activations(x.data(), pixels, C, BlockFormat{2, 128, -15, 15}, active_isa());
    benchmark::DoNotOptimize(a.storage.data());
  }
  state.counters["values/s"] =
      benchmark::Counter(static_cast<double>(C * pixels), benchmark::Counter::kIsIterationInvariantRate);
}

// args: C, H, K, batch, isa. The 3x3 stride-1 layers as Winograd F(2x2, 3x3); GFLOP/s counts the
// direct form's arithmetic, so the figure compares with BM_PackedConv's on the same shape.
void BM_Winograd(benchmark::State& state) {
  const int64_t C = state.range(0), H = state.range(1), K = state.range(2), N = state.range(3);
  const Isa isa = static_cast<Isa>(state.range(4));
  if (!cpu_supports(isa)) return state.SkipWithError("this CPU cannot run the instruction set");
  Rng rng(1);
  const Tensor x = random_tensor({N, H, H, C}, rng), w = random_tensor({K, C, 3, 3}, rng), b = random_tensor({K}, rng);
  const WinogradConv cv = pack_winograd(w, &b, isa);
  for (auto _ : state) {
    Tensor y = conv_winograd(cv, x, nullptr, true);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * N * H * H * K * C * 9, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

void ResNet50Shapes(benchmark::internal::Benchmark* b) {
  // C, H, K, kernel, stride, pad: stem, then each stage's 1x1 reduce, 3x3, 1x1 expand and downsample.
  const std::vector<std::vector<int64_t>> shapes = {
      {1, 40, 64, 7, 2, 3},                                                                                // conv1
      {64, 10, 64, 1, 1, 0},   {64, 10, 64, 3, 1, 1},   {64, 10, 256, 1, 1, 0},  {256, 10, 64, 1, 1, 0},   // layer1
      {256, 10, 128, 1, 1, 0}, {128, 10, 128, 3, 2, 1}, {128, 5, 512, 1, 1, 0},  {256, 10, 512, 1, 2, 0},  // layer2
      {512, 5, 128, 1, 1, 0},  {128, 5, 128, 3, 1, 1},                                                     // layer2.1-3
      {512, 5, 256, 1, 1, 0},  {256, 5, 256, 3, 2, 1},  {256, 3, 1024, 1, 1, 0}, {512, 5, 1024, 1, 2, 0},  // layer3
      {1024, 3, 256, 1, 1, 0}, {256, 3, 256, 3, 1, 1},                                                     // layer3.1-5
      {1024, 3, 512, 1, 1, 0}, {512, 3, 512, 3, 2, 1},  {512, 2, 2048, 1, 1, 0}, {1024, 3, 2048, 1, 2, 0},  // layer4
      {2048, 2, 512, 1, 1, 0}, {512, 2, 512, 3, 1, 1},  // layer4.1-2
  };
  b->ArgNames({"C", "H", "K", "k", "s", "p", "bwd", "nhwc"});
  for (const auto& s : shapes)
    for (int64_t bwd : {0, 1})
      for (int64_t nhwc : {0, 1}) b->Args({s[0], s[1], s[2], s[3], s[4], s[5], bwd, nhwc});
}

// The packed kernels' cases: C, H, K, kernel, stride, pad, N, isa.
std::vector<std::vector<int64_t>> packed_cases() {
  std::vector<std::vector<int64_t>> cases;
  const std::vector<std::vector<int64_t>> shapes = {
      {1, 40, 64, 7, 2, 3},    {64, 10, 64, 3, 1, 1},    {64, 10, 256, 1, 1, 0},
      {256, 10, 64, 1, 1, 0},  {512, 3, 512, 3, 2, 1},   {1024, 3, 2048, 1, 2, 0},
      {512, 2, 2048, 1, 1, 0}, {2048, 1, 1024, 1, 1, 0},  // the last: fc1
  };
  for (const auto& s : shapes)
    for (int64_t n : {1, 64})
      for (int64_t isa : {0, 1, 2}) cases.push_back({s[0], s[1], s[2], s[3], s[4], s[5], n, isa});
  // The paper's 224x224x3 at batch 1: the stem, the same arithmetic as a plain GEMM (147 = 3 x 7 x 7
  // inputs a pixel: what reading the stem's kernel rows costs beyond it), and each stage's first block.
  const std::vector<std::vector<int64_t>> paper = {
      {3, 224, 64, 7, 2, 3},  {147, 112, 64, 1, 1, 0},  {64, 56, 64, 1, 1, 0},    {64, 56, 64, 3, 1, 1},
      {64, 56, 256, 1, 1, 0}, {256, 56, 64, 1, 1, 0},   {128, 28, 128, 3, 1, 1},  {256, 14, 256, 3, 1, 1},
      {512, 7, 512, 3, 1, 1}, {512, 28, 1024, 1, 2, 0}, {1024, 14, 256, 1, 1, 0},
  };
  for (const auto& s : paper)
    for (int64_t isa : {1, 2}) cases.push_back({s[0], s[1], s[2], s[3], s[4], s[5], 1, isa});
  return cases;
}

void PackedShapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"C", "H", "K", "k", "s", "p", "N", "isa"});
  for (const auto& c : packed_cases()) b->Args(c);
}

// The same, for int8, on each tile: 1 the byte tile, 2 the word tile (where the set has one).
void Int8Shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"C", "H", "K", "k", "s", "p", "N", "isa", "tile"});
  for (auto c : packed_cases()) {
    c.push_back(0);
    for (int64_t tile : {1, 2}) {
      c.back() = tile;
      b->Args(c);
    }
  }
}

// Training's matrix products (40x40, batch 64: the shapes that take most of a step's multiply-adds),
// on OpenBLAS (gemm 0) and on toptag's tiles (1 avx2, 2 avx512). args: M, N, K, trans_a, trans_b, gemm.
void BM_Gemm(benchmark::State& state) {
  const int64_t M = state.range(0), N = state.range(1), K = state.range(2);
  const bool trans_a = state.range(3) != 0, trans_b = state.range(4) != 0;
  const int backend = static_cast<int>(state.range(5));
  if (backend > 0 && !cpu_supports(static_cast<Isa>(backend)))
    return state.SkipWithError("this CPU cannot run the instruction set");
  Rng rng(1);
  const Tensor a = random_tensor({M * K}, rng), b = random_tensor({K * N}, rng);
  Tensor c = Tensor::zeros({M * N});
  const int64_t lda = trans_a ? M : K, ldb = trans_b ? K : N;
  for (auto _ : state) {
    if (backend == 0)
      openblas_gemm(trans_a, trans_b, M, N, K, 1.0f, a.data(), lda, b.data(), ldb, 0.0f, c.data(), N);
    else
      tiled_gemm(static_cast<Isa>(backend), trans_a, trans_b, M, N, K, a.data(), lda, b.data(), ldb, 0.0f, c.data(), N);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * M * N * K, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

void GemmShapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"M", "N", "K", "ta", "tb", "gemm"});
  const std::vector<std::vector<int64_t>> shapes = {
      {576, 256, 2304, 0, 1},  {256, 512, 4608, 0, 1}, {576, 2304, 256, 0, 0},  {256, 2304, 576, 1, 0},
      {256, 4608, 512, 0, 0},  {512, 4608, 256, 1, 0}, {1600, 128, 1152, 0, 1}, {576, 1024, 256, 0, 1},
      {6400, 64, 576, 0, 1},   {64, 576, 6400, 1, 0},  {6400, 256, 64, 0, 1},   {128, 1152, 1600, 1, 0},
      {1600, 1152, 128, 0, 0}, {1024, 256, 576, 1, 0},
  };
  for (const auto& s : shapes)
    for (int64_t backend : {0, 1, 2}) b->Args({s[0], s[1], s[2], s[3], s[4], backend});
}

}  // namespace

BENCHMARK(BM_Gemm)->Apply(GemmShapes)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Conv)->Apply(ResNet50Shapes)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ConvMaxpool)
    ->ArgNames({"C", "H", "K", "k", "s", "p", "N", "isa", "fused"})
    ->ArgsProduct({{3}, {224}, {64}, {7}, {2}, {3}, {1}, {1, 2}, {0, 1}})
    ->ArgsProduct({{1}, {40}, {64}, {7}, {2}, {3}, {1, 64}, {1, 2}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_Winograd)
    ->ArgNames({"C", "H", "K", "N", "isa"})
    ->Args({64, 10, 64, 64, 2})
    ->Args({64, 10, 64, 64, 1})
    ->Args({64, 10, 64, 1, 2})
    ->Args({64, 10, 64, 1, 1})
    ->Args({128, 5, 128, 64, 2})
    ->Args({512, 2, 512, 64, 2})
    ->Args({64, 56, 64, 1, 2})
    ->Args({128, 28, 128, 1, 2})
    ->Args({256, 14, 256, 1, 2})
    ->Args({512, 7, 512, 1, 2})
    ->Args({64, 56, 64, 1, 1})
    ->Args({128, 28, 128, 1, 1})
    ->Args({256, 14, 256, 1, 1})
    ->Args({512, 7, 512, 1, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_PackedConv)->Apply(PackedShapes)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_BfpQuantize)->Args({64, 6400})->Args({256, 6400})->Args({2048, 256})->UseRealTime();
BENCHMARK(BM_BfpConv)->Apply(PackedShapes)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Int8Conv)->Apply(Int8Shapes)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_MAIN();
