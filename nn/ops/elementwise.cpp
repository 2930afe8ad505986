#include "nn/ops/elementwise.h"

#include <algorithm>

#include "nn/check.h"
#include "nn/profile.h"

namespace toptag {

Var relu(const Var& x) {
  ProfileScope profile("relu forward");
  Tensor y = Tensor::empty(x.shape());
  const float* in = x.value().data();
  float* out = y.data();
  const int64_t n = y.numel();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = in[i] > 0.0f ? in[i] : 0.0f;
  // Backward needs only the output's sign pattern, so the input can be freed right away.
  Tensor saved_y = x.requires_grad() ? y : Tensor();
  return record_op(std::move(y), {&x}, [yv = std::move(saved_y), xs = x.slot()](const Tensor& gy) {
    // dx = dy where y > 0
    ProfileScope profile("relu backward");
    Tensor dx = Tensor::empty(yv.shape());
    const float* g = gy.data();
    const float* yp = yv.data();
    float* d = dx.data();
    const int64_t count = yv.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < count; ++i) d[i] = yp[i] > 0.0f ? g[i] : 0.0f;
    add_grad(*xs, std::move(dx));
  });
}

Var add(const Var& a, const Var& b) {
  ProfileScope profile("add forward");
  if (!(a.shape() == b.shape())) fail("add: shapes differ, {} and {}", a.shape().str(), b.shape().str());
  Tensor y = Tensor::empty(a.shape());
  const float* pa = a.value().data();
  const float* pb = b.value().data();
  float* out = y.data();
  const int64_t n = y.numel();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = pa[i] + pb[i];
  return record_op(std::move(y), {&a, &b}, [as = a.slot(), bs = b.slot()](const Tensor& gy) {
    // da = db = dy (add_grad copies the shared buffer)
    if (as) add_grad(*as, gy);
    if (bs) add_grad(*bs, gy);
  });
}

Var add_relu(const Var& a, const Var& b) {
  ProfileScope profile("add forward");
  if (!(a.shape() == b.shape())) fail("add_relu: shapes differ, {} and {}", a.shape().str(), b.shape().str());
  Tensor y = Tensor::empty(a.shape());
  const float* pa = a.value().data();
  const float* pb = b.value().data();
  float* out = y.data();
  const int64_t n = y.numel();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = std::max(pa[i] + pb[i], 0.0f);
  Tensor saved_y = a.requires_grad() || b.requires_grad() ? y : Tensor();
  return record_op(std::move(y), {&a, &b}, [yv = std::move(saved_y), as = a.slot(), bs = b.slot()](const Tensor& gy) {
    // da = db = dy where y > 0 (add_grad copies the buffer for the second)
    ProfileScope profile("relu backward");
    Tensor d = Tensor::empty(yv.shape());
    const float* g = gy.data();
    const float* yp = yv.data();
    float* dp = d.data();
    const int64_t count = yv.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < count; ++i) dp[i] = yp[i] > 0.0f ? g[i] : 0.0f;
    if (as && bs) add_grad(*as, d);
    if (bs)
      add_grad(*bs, std::move(d));
    else if (as)
      add_grad(*as, std::move(d));
  });
}

}  // namespace toptag
