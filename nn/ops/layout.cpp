#include "nn/ops/layout.h"

#include <algorithm>

#include "nn/check.h"
#include "nn/profile.h"

namespace toptag {

Tensor nchw_to_nhwc(const Tensor& x) {
  const int64_t N = x.dim(0), C = x.dim(1), HW = x.dim(2) * x.dim(3);
  Tensor y = Tensor::empty({N, x.dim(2), x.dim(3), C});
  if (C == 1) {
    std::copy_n(x.data(), x.numel(), y.data());
    return y;
  }
#pragma omp parallel for schedule(static) if (x.numel() > 65536)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < HW; ++i) y.data()[(n * HW + i) * C + c] = x.data()[(n * C + c) * HW + i];
  return y;
}

Tensor nhwc_to_nchw(const Tensor& x) {
  const int64_t N = x.dim(0), H = x.dim(1), W = x.dim(2), C = x.dim(3), HW = H * W;
  Tensor y = Tensor::empty({N, C, H, W});
#pragma omp parallel for schedule(static) if (x.numel() > 65536)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < HW; ++i) y.data()[(n * C + c) * HW + i] = x.data()[(n * HW + i) * C + c];
  return y;
}

Var to_channels_last(const Var& x) {
  if (x.shape().rank() != 4) fail("to_channels_last: input must be (N,C,H,W), found shape {}", x.shape().str());
  ProfileScope profile("layout");
  // One channel: the same values in the same order, only the shape changes.
  Tensor y =
      x.shape()[1] == 1 ? x.value().reshape({x.shape()[0], x.shape()[2], x.shape()[3], 1}) : nchw_to_nhwc(x.value());
  return record_op(std::move(y), {&x}, [xs = x.slot(), shape = x.shape()](const Tensor& gy) {
    add_grad(*xs, shape[1] == 1 ? gy.reshape(shape) : nhwc_to_nchw(gy));
  });
}

}  // namespace toptag
