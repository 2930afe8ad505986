#include "nn/kernels/isa.h"

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>

#include "nn/blas.h"
#include "nn/check.h"

namespace toptag {

namespace {

Isa parse_isa(const char* text) {
  for (Isa isa : {Isa::ref, Isa::avx2, Isa::avx512})
    if (std::strcmp(text, isa_name(isa)) == 0) {
      if (!cpu_supports(isa))
        fail("TOPTAG_ISA={}: this CPU cannot run it (it runs {} at best)", text, isa_name(best_isa()));
      return isa;
    }
  fail("TOPTAG_ISA={}: unknown; use avx512, avx2 or ref", text);
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::ref:
      return "ref";
    case Isa::avx2:
      return "avx2";
    case Isa::avx512:
      return "avx512";
  }
  return "?";
}

bool cpu_supports(Isa isa) {
#ifndef TOPTAG_X86_KERNELS
  if (isa != Isa::ref) return false;  // this build has no x86 kernels
#endif
  static const CpuFeatures cpu = detect_cpu();
  const bool avx2 = cpu.avx2 && cpu.fma && cpu.os_saves_avx;
  switch (isa) {
    case Isa::ref:
      return true;
    case Isa::avx2:
      return avx2;
    case Isa::avx512:
      return avx2 && cpu.avx512f && cpu.avx512bw && cpu.avx512dq && cpu.avx512vl && cpu.os_saves_avx512;
  }
  return false;
}

Isa best_isa() {
  if (cpu_supports(Isa::avx512)) return Isa::avx512;
  if (cpu_supports(Isa::avx2)) return Isa::avx2;
  return Isa::ref;
}

Isa active_isa() {
  static const Isa isa = [] {
    const char* forced = std::getenv("TOPTAG_ISA");
    return forced && *forced ? parse_isa(forced) : best_isa();
  }();
  return isa;
}

std::string describe_isa() {
  const Isa isa = active_isa(), best = best_isa();
  if (isa == best) return fmt::format("{} (the best this CPU runs)", isa_name(isa));
  return fmt::format("{} (TOPTAG_ISA={}; this CPU also runs {})", isa_name(isa), isa_name(isa), isa_name(best));
}

}  // namespace toptag
