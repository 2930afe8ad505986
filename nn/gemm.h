// Row-major single-precision matrix products: on OpenBLAS, or on toptag's own tiles (nn/blas.h GemmChoice).
#pragma once

#include <cstdint>

namespace toptag {

// C (M x N) = alpha * op(A) * op(B) + beta * C, all row-major with leading dimensions given.
// op(A) is M x K: A is M x K (lda >= K) or, with trans_a, K x M (lda >= M). Likewise op(B) is K x N.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// The same product on OpenBLAS alone (gemm() may take it on toptag's own tiles instead: nn/kernels/tiled_gemm.h).
void openblas_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                   int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// Floating-point operations (2 M N K per call) done by gemm() in this process so far: take the
// difference around a forward or a training step to count a model's FLOPs exactly.
int64_t gemm_flops();
// Adds to that count the products an op does without gemm() where it stands for one (a channels-last
// training convolution run on toptag's direct kernel counts its im2col GEMM's 2 x rows x K x RSC).
void count_gemm_flops(int64_t flops);

// Plain triple-loop reference of gemm(), for tests.
void gemm_ref(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
              const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

}  // namespace toptag
