// A row-major single-precision GEMM on toptag's own tile kernels (nn/kernels/tile.h), for training's
// matrix products: C = op(A) op(B) + beta C, beta 0 or 1.
//
// It is the inference kernels' tile made general (tile.h GemmTileArgs: the same registers, 12x32 on
// AVX-512, 6x16 on AVX2). Each tile keeps its mr x nr sums in registers over kKc = 256 steps of k and
// adds them to C on the way out. op(A) is read where it lies, row by row, or, transposed (the weight
// gradients' A), from a copy of the block's rows, kKc rows of k at a time, the rows side by side in
// each: read in place, rows 2048 floats apart fell on few cache sets, and 2048 x 1024 x 256 (dW of a
// 1x1 in layer4) ran in 4.3 ms against OpenBLAS's 3.3; with the copy, 3.1 (Intel Xeon). op(B) is read where
// it lies too, nr columns at a time, except where it is transposed (the forward's weights) or its
// last panel is narrower than nr: those panels are packed, kKc rows at a time, shared by the threads.
// The tiles run in blocks of up to 16 row tiles by every panel, so that a block's rows stay in L2
// while the panels go by, and the blocks are shared out among the threads.
//
// Why not OpenBLAS alone: Debian's OpenBLAS runs whichever kernel its OPENBLAS_CORETYPE names, and a
// user's (or a cluster image's) Haswell there holds an AVX-512 CPU to AVX2 for every training product;
// these tiles follow TOPTAG_ISA and the CPU. nn/blas.cpp gemm() chooses between the two.
#pragma once

#include <cstdint>

#include "nn/kernels/isa_id.h"

namespace toptag {

// Whether tiled_gemm takes this product: alpha 1, beta 0 or 1, and a shape with work to share.
bool tiled_gemm_takes(int64_t M, int64_t N, int64_t K, float alpha, float beta);

// C (M x N) = op(A) op(B) + beta C on the kernel set of `isa`; the arguments as toptag::gemm's (nn/gemm.h),
// alpha 1. Runs on num_threads() threads, or on one inside a parallel region.
void tiled_gemm(Isa isa, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

}  // namespace toptag
