// Which instruction set toptag's own kernels run on, chosen once per process at run time.
//
// The kernels are compiled for every instruction set toptag knows (per-file compiler flags, see
// nn/CMakeLists.txt) and one is picked from the CPU's cpuid and xgetbv (nn/blas.h detect_cpu), so a
// binary built on one machine runs the best path its user's CPU allows:
//   avx512  AVX-512 F/BW/DQ/VL with the ZMM state saved by the OS (Intel Skylake-SP and later, AMD Zen 4)
//   avx2    AVX2 + FMA (Intel Haswell and later, AMD Zen 1-3)
//   ref     portable C++ loops: any CPU; the reference the others are tested against
// TOPTAG_ISA=avx512|avx2|ref forces a path (for tests and comparisons); asking for one this CPU lacks
// is an error, never a crash.
#pragma once

#include <string>

#include "nn/kernels/isa_id.h"

namespace toptag {

const char* isa_name(Isa isa);

// Whether this CPU (and its operating system) can run the path.
bool cpu_supports(Isa isa);

// The best path this CPU supports.
Isa best_isa();

// The path in use: TOPTAG_ISA when set, else best_isa(). Read once; throws toptag::Error for an
// unknown or unsupported TOPTAG_ISA value.
Isa active_isa();

// "avx512 (best this CPU runs)" or "avx2 (TOPTAG_ISA=avx2; this CPU also runs avx512)", for banners.
std::string describe_isa();

}  // namespace toptag
