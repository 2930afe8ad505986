// OpenBLAS, loaded by toptag itself so that it runs the fastest kernel this CPU supports.
//
// Debian's OpenBLAS (0.3.21) picks its kernels once, when the library loads, and takes an AMD Zen 4
// with AVX-512 for a Haswell: it runs AVX2 kernels at half the speed the CPU has. OpenBLAS reads the
// environment variable OPENBLAS_CORETYPE at that moment, so toptag does not link it: it decides on the
// kernel from the CPU's own feature flags, sets the variable, and only then loads the library
// (dlopen). The rules, in choose_coretype():
//   - OPENBLAS_CORETYPE set by the user always wins;
//   - a CPU whose AVX-512 (F, CD, BW, DQ, VL) the operating system has enabled runs "SkylakeX",
//     OpenBLAS's AVX-512 sgemm kernel (Cooperlake and Sapphire Rapids use the same one for float32);
//   - any other CPU keeps OpenBLAS's own choice: toptag never asks for an instruction set it lacks.
#pragma once

#include <string>

#include "nn/kernels/isa_id.h"

namespace toptag {

// What the CPU and the operating system support, from cpuid and xgetbv.
struct CpuFeatures {
  bool avx2 = false, fma = false;
  bool avx512f = false, avx512cd = false, avx512bw = false, avx512dq = false, avx512vl = false;
  bool avx512vnni = false;       // VPDPBUSD: u8 x s8 dot products of 4 (Intel Cascade Lake and later, AMD Zen 4)
  bool os_saves_avx = false;     // XCR0: the OS saves the YMM state
  bool os_saves_avx512 = false;  // XCR0: the OS saves the opmask and ZMM state
  std::string vendor, brand;
};
CpuFeatures detect_cpu();

// The kernel toptag asks OpenBLAS for ("" keeps OpenBLAS's own choice), given the CPU and the
// user's OPENBLAS_CORETYPE (empty when unset). A user's value is never replaced.
std::string choose_coretype(const CpuFeatures& cpu, const std::string& user_coretype);

// Whether OpenBLAS's kernel `core` is one of its AVX-512 sgemm kernels (SkylakeX, Cooperlake, SapphireRapids).
bool avx512_coretype(const std::string& core);

// The loaded library and the kernel it runs.
struct BlasInfo {
  std::string library;  // the file loaded
  std::string core;     // OpenBLAS's name for the kernel in use ("SkylakeX", "Haswell", ...)
  std::string config;   // openblas_get_config(): version and build options
  std::string reason;   // why this kernel: "selected by toptag: ...", "OPENBLAS_CORETYPE=...", ...
  // One line for banners and reports: "OpenBLAS 0.3.21 kernel SkylakeX (selected by toptag: ...)".
  std::string summary() const;
};
// Loads OpenBLAS on first use (thread-safe). Call early in main(), before other threads start, since
// it may set OPENBLAS_CORETYPE in the environment. Throws toptag::Error if the library cannot load.
const BlasInfo& blas_info();
// Whether OpenBLAS has been loaded (without loading it): code that starts threads checks its order.
bool blas_loaded();

// Who computes gemm()'s products (nn/gemm.h): OpenBLAS, or toptag's own tiles (nn/kernels/tiled_gemm.h).
// The tiles run on an AVX-512 path whose OpenBLAS kernel has no AVX-512: a user's (or a cluster
// image's) OPENBLAS_CORETYPE=Haswell on an AMD Zen 4 or 5. There, on training's products at 40x40,
// batch 64, they measured 1.6-2.2x OpenBLAS's Haswell kernel, and the training step 1.5x. With
// OpenBLAS's AVX-512 kernel (SkylakeX) the two measured the same, and on AVX2 OpenBLAS was ahead, so
// OpenBLAS keeps those. TOPTAG_GEMM=openblas|toptag decides instead.
struct GemmChoice {
  bool tiles = false;
  std::string reason;  // "toptag's avx512 tiles: OpenBLAS's kernel Haswell has no AVX-512"
};
// The rule, given the kernel path in use (nn/kernels/isa.h), OpenBLAS's kernel and TOPTAG_GEMM (null
// or empty when unset). Throws toptag::Error for a TOPTAG_GEMM other than openblas or toptag.
GemmChoice choose_gemm(Isa isa, const std::string& openblas_core, const char* forced);
// This process's choice, made once.
const GemmChoice& gemm_choice();

// openblas_set_num_threads on the loaded library (nn/parallel.h sets it with OpenMP's).
void set_blas_threads(int n);

}  // namespace toptag
