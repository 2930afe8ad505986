#include "nn/ops/layout.h"

#include <algorithm>

#include "nn/check.h"
#include "nn/profile.h"

namespace toptag {

// One channel: the same values in the same order, so only the shape changes (the storage is shared).
Tensor nchw_to_nhwc(const Tensor& x) {
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3), HW = H * W;
  if (C == 1) return x.reshape({N, H, W, 1});
  Tensor y = Tensor::empty({N, H, W, C});
  const float* __restrict in = x.data();
  float* __restrict out = y.data();
#pragma omp parallel for collapse(2) schedule(static) if (x.numel() > 65536)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < HW; ++i) out[(n * HW + i) * C + c] = in[(n * C + c) * HW + i];
  return y;
}

Tensor nhwc_to_nchw(const Tensor& x) {
  const int64_t N = x.dim(0), H = x.dim(1), W = x.dim(2), C = x.dim(3), HW = H * W;
  if (C == 1) return x.reshape({N, 1, H, W});
  Tensor y = Tensor::empty({N, C, H, W});
  const float* __restrict in = x.data();
  float* __restrict out = y.data();
#pragma omp parallel for collapse(2) schedule(static) if (x.numel() > 65536)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < HW; ++i) out[(n * C + c) * HW + i] = in[(n * HW + i) * C + c];
  return y;
}

Var to_channels_last(const Var& x) {
  if (x.shape().rank() != 4) fail("to_channels_last: input must be (N,C,H,W), found shape {}", x.shape().str());
  ProfileScope profile("layout");
  return record_op(nchw_to_nhwc(x.value()), {&x},
                   [xs = x.slot()](const Tensor& gy) { add_grad(*xs, nhwc_to_nchw(gy)); });
}

}  // namespace toptag
