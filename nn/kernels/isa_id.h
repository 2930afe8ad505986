// The instruction sets toptag's kernels are compiled for, and nothing else: the per-ISA kernel files
// include this, and must include nothing that instantiates library code (nn/kernels/tile_simd.inc).
#pragma once

namespace toptag {

enum class Isa { ref, avx2, avx512 };

}  // namespace toptag
