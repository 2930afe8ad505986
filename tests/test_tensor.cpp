// Tensors, the buffer pool and the autodiff tape.
#include <array>

#include "nn/blas.h"
#include "nn/gemm.h"
#include "nn/kernels/isa.h"
#include "nn/ops/elementwise.h"
#include "nn/ops/linear.h"
#include "testing.h"

namespace toptag {
namespace {

TEST(Tensor, ShapeAndReshape) {
  Tensor t = Tensor::zeros({2, 3, 4});
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.shape().str(), "[2, 3, 4]");
  Tensor r = t.reshape({6, 4});
  EXPECT_TRUE(r.shares_storage_with(t));
  EXPECT_THROW(t.reshape({5, 5}), Error);
  EXPECT_THROW(expect_shape(t, {2, 3, 5}, "thing"), Error);
}

TEST(Tensor, ConcatRowsPutsThePartsOneAfterTheOther) {
  const Tensor a = Tensor::from({2, 1, 2}, std::vector<float>{1, 2, 3, 4});
  const Tensor b = Tensor::from({1, 1, 2}, std::vector<float>{5, 6});
  const std::vector<Tensor> parts{a, b, Tensor::zeros({0, 1, 2})};
  const Tensor all = concat_rows(parts);
  EXPECT_EQ(all.shape(), Shape({3, 1, 2}));
  EXPECT_EQ(std::vector<float>(all.span().begin(), all.span().end()), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_TRUE(concat_rows(std::vector<Tensor>{a}).shares_storage_with(a));  // one part: not copied
  const std::vector<Tensor> mismatched{a, Tensor::zeros({1, 2, 1})};
  EXPECT_THROW(concat_rows(mismatched), Error);
  EXPECT_THROW(concat_rows(std::vector<Tensor>{}), Error);
}

TEST(Tensor, PoolReusesFreedBuffers) {
  pool_release_cached();
  const PoolStats before = pool_stats();
  for (int i = 0; i < 10; ++i) Tensor::empty({1000, 7});  // same size each time
  const PoolStats after = pool_stats();
  EXPECT_EQ(after.allocations - before.allocations, 1);
  EXPECT_EQ(after.reuses - before.reuses, 9);
}

TEST(Autograd, ParameterGradientsAccumulateAcrossBackwardPasses) {
  Var w = Var::parameter(Tensor::from({1, 2}, std::vector<float>{1, 2}));
  Var x(Tensor::from({1, 2}, std::vector<float>{3, 4}));
  for (int pass = 0; pass < 2; ++pass) backward(linear(x, w, nullptr));
  // d(x w^T)/dw = x, twice.
  EXPECT_FLOAT_EQ(w.grad().data()[0], 6.0f);
  EXPECT_FLOAT_EQ(w.grad().data()[1], 8.0f);
  w.zero_grad();
  EXPECT_FLOAT_EQ(w.grad().data()[0], 0.0f);
}

// The hook data-parallel training reduces gradients from: each parameter exactly once, when no op
// left on the tape reads it, so its gradient is already the final one; w2 (read last) comes first.
TEST(Autograd, ParameterReadyHookFiresOnceWithTheFinalGradient) {
  Var w1 = Var::parameter(Tensor::from({2, 2}, std::vector<float>{1, 2, 3, 4}));
  Var w2 = Var::parameter(Tensor::from({1, 2}, std::vector<float>{1, -1}));
  Var x(Tensor::from({1, 2}, std::vector<float>{1, 1}));
  // w1 is read twice (h and the skip through it again), w2 once, after both.
  Var h = relu(linear(x, w1, nullptr));
  Var y = linear(add(h, linear(h, w1, nullptr)), w2, nullptr);
  std::vector<std::pair<GradSlot*, std::vector<float>>> seen;
  backward(y, [&](GradSlot& p) { seen.push_back({&p, {p.grad.data(), p.grad.data() + p.grad.numel()}}); });
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].first, w2.slot().get());
  EXPECT_EQ(seen[1].first, w1.slot().get());
  for (const auto& [slot, grad] : seen)
    EXPECT_EQ(grad, std::vector<float>(slot->grad.data(), slot->grad.data() + slot->grad.numel()));
  // By hand: h = relu([3, 7]) = [3, 7], u = h w1^T = [17, 37], y = (h + u) w2^T; dy/dw2 = h + u.
  EXPECT_EQ(seen[0].second, (std::vector<float>{20, 44}));
}

TEST(Autograd, ActivationReadTwiceGetsTheSum) {
  Var x(Tensor::from({3}, std::vector<float>{-1, 2, 3}), true);
  Var y = add(relu(x), x);  // dy/dx = [0, 1, 1] + 1
  backward(y, Tensor::full({3}, 1.0f));
  EXPECT_FLOAT_EQ(x.grad().data()[0], 1.0f);
  EXPECT_FLOAT_EQ(x.grad().data()[1], 2.0f);
  EXPECT_FLOAT_EQ(x.grad().data()[2], 2.0f);
}

TEST(Autograd, NoGradRecordsNothing) {
  clear_tape();
  Var x(Tensor::full({4}, 1.0f), true);
  {
    NoGradGuard guard;
    Var y = relu(add(x, x));
    EXPECT_FALSE(y.requires_grad());
    EXPECT_EQ(tape_size(), 0u);
  }
  Var y = relu(x);
  EXPECT_EQ(tape_size(), 1u);
  clear_tape();
}

TEST(Autograd, BackwardWithoutGradientIsAnError) {
  Var x(Tensor::full({1}, 1.0f));
  EXPECT_THROW(backward(relu(x)), Error);
}

TEST(Gemm, OpenBlasMatchesReferenceInAllTranspositions) {
  Rng rng(3);
  // 7 x 5 x 9; and 9001 x 13 x 7, tall and narrow: split into row blocks, one per thread (nn/blas.cpp),
  // with an odd row count so that the blocks differ in size.
  for (const auto [M, N, K] : {std::array<int64_t, 3>{7, 5, 9}, std::array<int64_t, 3>{9001, 13, 7}})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        Tensor a = testing::random_tensor({M * K}, rng), b = testing::random_tensor({K * N}, rng);
        Tensor c = testing::random_tensor({M * N}, rng), c_ref = c.clone();
        openblas_gemm(ta, tb, M, N, K, 0.5f, a.data(), ta ? M : K, b.data(), tb ? K : N, 1.0f, c.data(), N);
        gemm_ref(ta, tb, M, N, K, 0.5f, a.data(), ta ? M : K, b.data(), tb ? K : N, 1.0f, c_ref.data(), N);
        testing::expect_close(c, c_ref, "gemm " + std::to_string(M) + "x" + std::to_string(N), 1e-5, 1e-5);
      }
}

}  // namespace
}  // namespace toptag

namespace toptag {
namespace {

// The kernel decision on the feature sets of real CPUs, not only on this machine's.
TEST(Blas, AskForTheAvx512KernelOnlyWhereTheCpuAndTheOsHaveIt) {
  CpuFeatures zen4;  // AMD EPYC Zen 4: AVX-512 F/CD/BW/DQ/VL, which OpenBLAS 0.3.21 runs as Haswell
  zen4.avx2 = zen4.fma = zen4.os_saves_avx = zen4.os_saves_avx512 = true;
  zen4.avx512f = zen4.avx512cd = zen4.avx512bw = zen4.avx512dq = zen4.avx512vl = true;
  EXPECT_EQ(choose_coretype(zen4, ""), "SkylakeX");
  EXPECT_EQ(choose_coretype(zen4, "Haswell"), "") << "a user's OPENBLAS_CORETYPE always wins";

  CpuFeatures no_os = zen4;  // the kernel does not save the ZMM registers (XCR0): AVX-512 unusable
  no_os.os_saves_avx512 = false;
  EXPECT_EQ(choose_coretype(no_os, ""), "");

  CpuFeatures knights = zen4;  // AVX-512 F/CD without BW/DQ/VL (Xeon Phi): not SkylakeX's set
  knights.avx512bw = knights.avx512dq = knights.avx512vl = false;
  EXPECT_EQ(choose_coretype(knights, ""), "");

  CpuFeatures zen3 = zen4;  // AVX2 only (Zen 1-3, Haswell to Comet Lake, Alder Lake): OpenBLAS's own choice
  zen3.avx512f = zen3.avx512cd = zen3.avx512bw = zen3.avx512dq = zen3.avx512vl = zen3.os_saves_avx512 = false;
  EXPECT_EQ(choose_coretype(zen3, ""), "");

  EXPECT_EQ(choose_coretype(CpuFeatures{}, ""), "");  // nothing detected (another architecture)
}

// Training's products run on toptag's tiles exactly where OpenBLAS's kernel leaves the AVX-512 path's
// width unused (a user's OPENBLAS_CORETYPE=Haswell on a Zen 5), unless TOPTAG_GEMM says otherwise.
TEST(Blas, ChoosesTheTilesWhereOpenBlasLacksAvx512) {
  EXPECT_TRUE(choose_gemm(Isa::avx512, "Haswell", nullptr).tiles);
  EXPECT_NE(choose_gemm(Isa::avx512, "Haswell", nullptr).reason.find("Haswell has no AVX-512"), std::string::npos);
  EXPECT_FALSE(choose_gemm(Isa::avx512, "SkylakeX", nullptr).tiles);
  EXPECT_FALSE(choose_gemm(Isa::avx512, "Cooperlake", nullptr).tiles);
  EXPECT_FALSE(choose_gemm(Isa::avx2, "Haswell", nullptr).tiles) << "AVX2: OpenBLAS measured ahead";
  EXPECT_FALSE(choose_gemm(Isa::ref, "Prescott", nullptr).tiles);
  EXPECT_TRUE(choose_gemm(Isa::avx2, "Haswell", "toptag").tiles);
  EXPECT_FALSE(choose_gemm(Isa::avx512, "Haswell", "openblas").tiles);
  EXPECT_THROW(choose_gemm(Isa::avx512, "Haswell", "mkl"), Error);
  EXPECT_TRUE(avx512_coretype("SapphireRapids") && !avx512_coretype("Zen"));
}

TEST(Blas, ReportsTheKernelItLoaded) {
  const BlasInfo& info = blas_info();
  EXPECT_FALSE(info.core.empty());
  EXPECT_NE(info.config.find("OpenBLAS"), std::string::npos) << info.config;
  EXPECT_NE(info.summary().find(info.core), std::string::npos) << info.summary();
  // Whatever the machine: the kernel is AVX-512 only where this CPU and its OS support AVX-512.
  const CpuFeatures cpu = detect_cpu();
  if (avx512_coretype(info.core)) {
    EXPECT_TRUE(cpu.avx512f && cpu.os_saves_avx512) << info.summary();
  }
  const char* user = std::getenv("OPENBLAS_CORETYPE");
  if (!user && choose_coretype(cpu, "") == "SkylakeX") {
    EXPECT_EQ(info.core, "SkylakeX") << info.summary();
  }
  // This machine's own choice of who runs training's products.
  if (!std::getenv("TOPTAG_GEMM")) {
    EXPECT_EQ(gemm_choice().tiles, active_isa() == Isa::avx512 && !avx512_coretype(info.core)) << gemm_choice().reason;
  }
}

}  // namespace
}  // namespace toptag
