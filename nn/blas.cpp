#include "nn/blas.h"

#include <cblas.h>
#include <dlfcn.h>
#include <fmt/format.h>
#include <omp.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "nn/check.h"
#include "nn/gemm.h"
#include "nn/kernels/isa.h"
#include "nn/kernels/tiled_gemm.h"
#include "nn/parallel.h"
#include "nn/profile.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace toptag {

namespace {

// Set beside OPENBLAS_CORETYPE when toptag chose it, so that child processes (the study's stages),
// which inherit both, know the value is toptag's and not the user's.
constexpr const char* kSelectedBy = "TOPTAG_SELECTED_CORETYPE";

#ifndef TOPTAG_OPENBLAS_LIBRARY
#define TOPTAG_OPENBLAS_LIBRARY "libopenblas.so.0"
#endif

struct Blas {
  BlasInfo info;
  decltype(&cblas_sgemm) sgemm = nullptr;
  decltype(&openblas_set_num_threads) set_num_threads = nullptr;
};

template <typename F>
F symbol(void* library, const char* name) {
  void* f = dlsym(library, name);
  if (!f) fail("{}: has no function {} (is it OpenBLAS?)", TOPTAG_OPENBLAS_LIBRARY, name);
  return reinterpret_cast<F>(f);
}

bool same_name(const std::string& a, const std::string& b) {
  return a.size() == b.size() && strncasecmp(a.c_str(), b.c_str(), a.size()) == 0;
}

Blas load_blas() {
  Blas b;
  b.info.library = TOPTAG_OPENBLAS_LIBRARY;
  const bool already_loaded = dlopen(b.info.library.c_str(), RTLD_NOW | RTLD_NOLOAD) != nullptr;
  const char* env = std::getenv("OPENBLAS_CORETYPE");
  const char* ours = std::getenv(kSelectedBy);
  const bool inherited = env && ours && std::strcmp(env, ours) == 0;
  const std::string user = env && !inherited ? env : "";
  const CpuFeatures cpu = detect_cpu();
  const std::string choice = already_loaded ? "" : choose_coretype(cpu, user);
  if (!choice.empty()) {
    setenv("OPENBLAS_CORETYPE", choice.c_str(), 1);
    setenv(kSelectedBy, choice.c_str(), 1);
  }
  void* library = dlopen(b.info.library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!library) fail("cannot load OpenBLAS: {}", dlerror());
  b.sgemm = symbol<decltype(&cblas_sgemm)>(library, "cblas_sgemm");
  b.set_num_threads = symbol<decltype(&openblas_set_num_threads)>(library, "openblas_set_num_threads");
  b.info.core = symbol<decltype(&openblas_get_corename)>(library, "openblas_get_corename")();
  b.info.config = symbol<decltype(&openblas_get_config)>(library, "openblas_get_config")();
  if (already_loaded)
    b.info.reason = "OpenBLAS's own choice: the library was loaded before toptag could choose";
  else if (!user.empty() && same_name(user, b.info.core))
    b.info.reason = fmt::format("OPENBLAS_CORETYPE={} set by the user", user);
  else if (!user.empty())
    b.info.reason =
        fmt::format("OpenBLAS's own choice: it has no kernel for OPENBLAS_CORETYPE={} set by the user", user);
  else if (!choice.empty() && same_name(choice, b.info.core))
    b.info.reason = "selected by toptag: the CPU has AVX-512";
  else if (!choice.empty())
    b.info.reason = fmt::format("OpenBLAS's own choice: this build has no {} kernel", choice);
  else
    b.info.reason = "OpenBLAS's own choice";
  return b;
}

std::atomic<bool> blas_is_loaded{false};

const Blas& loaded() {
  static const Blas b = load_blas();
  blas_is_loaded.store(true, std::memory_order_relaxed);
  return b;
}

}  // namespace

CpuFeatures detect_cpu() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  const unsigned max_leaf = a;
  char vendor[13] = {};
  std::memcpy(vendor, &b, 4), std::memcpy(vendor + 4, &d, 4), std::memcpy(vendor + 8, &c, 4);
  f.vendor = vendor;
  __get_cpuid(1, &a, &b, &c, &d);
  f.fma = c & (1u << 12);
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28);
  if (osxsave && avx) {
    unsigned xcr0_low = 0, xcr0_high = 0;
    __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
    f.os_saves_avx = (xcr0_low & 0x6) == 0x6;       // SSE and YMM state
    f.os_saves_avx512 = (xcr0_low & 0xE6) == 0xE6;  // and opmask, ZMM0-15 upper halves, ZMM16-31
  }
  if (max_leaf >= 7) {
    __get_cpuid_count(7, 0, &a, &b, &c, &d);
    f.avx2 = b & (1u << 5);
    f.avx512f = b & (1u << 16);
    f.avx512dq = b & (1u << 17);
    f.avx512cd = b & (1u << 28);
    f.avx512bw = b & (1u << 30);
    f.avx512vl = b & (1u << 31);
    f.avx512vnni = c & (1u << 11);
  }
  unsigned brand[12] = {};
  if (__get_cpuid(0x80000000, &a, &b, &c, &d) && a >= 0x80000004) {
    for (unsigned i = 0; i < 3; ++i)
      __get_cpuid(0x80000002 + i, &brand[4 * i], &brand[4 * i + 1], &brand[4 * i + 2], &brand[4 * i + 3]);
    f.brand = std::string(reinterpret_cast<const char*>(brand), strnlen(reinterpret_cast<const char*>(brand), 48));
    f.brand.erase(f.brand.find_last_not_of(' ') + 1);
  }
#endif
  return f;
}

std::string choose_coretype(const CpuFeatures& cpu, const std::string& user_coretype) {
  if (!user_coretype.empty()) return "";
  const bool avx512 = cpu.avx512f && cpu.avx512cd && cpu.avx512bw && cpu.avx512dq && cpu.avx512vl;
  if (avx512 && cpu.avx2 && cpu.fma && cpu.os_saves_avx && cpu.os_saves_avx512) return "SkylakeX";
  return "";
}

bool avx512_coretype(const std::string& core) {
  return same_name(core, "SkylakeX") || same_name(core, "Cooperlake") || same_name(core, "SapphireRapids");
}

GemmChoice choose_gemm(Isa isa, const std::string& openblas_core, const char* forced) {
  const std::string tiles = fmt::format("toptag's {} tiles", isa_name(isa));
  const std::string blas = fmt::format("OpenBLAS, kernel {}", openblas_core);
  if (forced && *forced) {
    const std::string value = forced;
    if (value == "toptag") return {true, tiles + " (TOPTAG_GEMM=toptag)"};
    if (value == "openblas") return {false, blas + " (TOPTAG_GEMM=openblas)"};
    fail("TOPTAG_GEMM={}: use openblas or toptag (or leave it unset)", value);
  }
  if (isa == Isa::avx512 && !avx512_coretype(openblas_core))
    return {true, fmt::format("{}: OpenBLAS's kernel {} has no AVX-512", tiles, openblas_core)};
  return {false, blas};
}

const GemmChoice& gemm_choice() {
  static const GemmChoice choice = choose_gemm(active_isa(), blas_info().core, std::getenv("TOPTAG_GEMM"));
  return choice;
}

std::string BlasInfo::summary() const {
  // openblas_get_config() starts "OpenBLAS 0.3.21 ..."
  const size_t version_end = config.find(' ', config.find(' ') + 1);
  return fmt::format("{}, kernel {} ({})", config.substr(0, version_end), core, reason);
}

const BlasInfo& blas_info() {
  return loaded().info;
}

bool blas_loaded() {
  return blas_is_loaded.load(std::memory_order_relaxed);
}

void set_blas_threads(int n) {
  loaded().set_num_threads(n);
}

namespace {
std::atomic<int64_t> flops_done{0};
}

int64_t gemm_flops() {
  return flops_done.load(std::memory_order_relaxed);
}

void count_gemm_flops(int64_t flops) {
  flops_done.fetch_add(flops, std::memory_order_relaxed);
}

namespace {

// A product with many rows and few columns (a channels-last training layer: 6400 pixels x 64
// channels in layer1 at 40x40, batch 64) is split poorly by OpenBLAS's own threading. Handing each
// thread a block of rows, each running OpenBLAS alone (inside our parallel region it does), measured
// on 2 threads: 6400 x 64 x 576 from 3.5 to 2.4 ms, 6400 x 256 x 64 from 1.6 to 1.0 ms, a ResNet-50
// training step from 557 to 526 ms. On square and wide shapes the split gained nothing, so they keep
// OpenBLAS's.
constexpr int64_t kSplitMinRowsPerThread = 2048;
constexpr int64_t kSplitMaxColumns = 1024;

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  loaded().sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                 static_cast<blasint>(M), static_cast<blasint>(N), static_cast<blasint>(K), alpha, A,
                 static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}

}  // namespace

void openblas_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                   int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const int threads = num_threads();
  if (threads < 2 || omp_in_parallel() || N > kSplitMaxColumns || M < kSplitMinRowsPerThread * threads) {
    sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
    const int64_t m0 = M * t / n, m1 = M * (t + 1) / n;
    // Row m of op(A) is row m of A, or column m of A when A is transposed.
    sgemm(trans_a, trans_b, m1 - m0, N, K, alpha, trans_a ? A + m0 : A + m0 * lda, lda, B, ldb, beta, C + m0 * ldc,
          ldc);
  }
}

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  ProfileScope profile("gemm");
  flops_done.fetch_add(2 * M * N * K, std::memory_order_relaxed);
  if (gemm_choice().tiles && tiled_gemm_takes(M, N, K, alpha, beta)) {
    tiled_gemm(active_isa(), trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  openblas_gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace toptag
