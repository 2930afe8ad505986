#include "nn/ops/elementwise.h"

#include "nn/check.h"

namespace toptag {

Var relu(const Var& x) {
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

}  // namespace toptag
