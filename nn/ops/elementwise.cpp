#include "nn/ops/elementwise.h"

#include <algorithm>

#include "nn/check.h"
#include "nn/profile.h"

namespace toptag {

Tensor relu_backward(const Tensor& gy, const Tensor& y) {
  ProfileScope profile("relu backward");
  Tensor dx = Tensor::empty(y.shape());
  const float* g = gy.data();
  const float* yp = y.data();
  float* d = dx.data();
  const int64_t n = y.numel();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) d[i] = yp[i] > 0.0f ? g[i] : 0.0f;
  return dx;
}

Var relu(const Var& x) {
  ProfileScope profile("relu forward");
  Tensor y = Tensor::empty(x.shape());
  const float* in = x.value().data();
  float* out = y.data();
  const int64_t n = y.numel();
#pragma omp parallel for simd schedule(static)
  // NaN passes through, as in PyTorch and ONNX: `in > 0 ? in : 0` would turn it into a normal 0.
  for (int64_t i = 0; i < n; ++i) out[i] = in[i] <= 0.0f ? 0.0f : in[i];
  // Backward needs only the output's sign pattern, so the input can be freed right away.
  Tensor saved_y = x.requires_grad() ? y : Tensor();
  return record_op(std::move(y), {&x}, [yv = std::move(saved_y), xs = x.slot()](const Tensor& gy) {
    add_grad(*xs, relu_backward(gy, yv));
  });
}

namespace {

// y = a + b, or max(a + b, 0), in one pass.
template <bool kRelu>
Tensor sum(const Var& a, const Var& b, const char* op) {
  ProfileScope profile("add forward");
  if (!(a.shape() == b.shape())) fail("{}: shapes differ, {} and {}", op, a.shape().str(), b.shape().str());
  Tensor y = Tensor::empty(a.shape());
  const float* pa = a.value().data();
  const float* pb = b.value().data();
  float* out = y.data();
  const int64_t n = y.numel();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = kRelu ? std::max(pa[i] + pb[i], 0.0f) : pa[i] + pb[i];
  return y;
}

// Hands both inputs of a sum the same gradient buffer; add_grad never writes it while both hold it.
void deliver_to_both(GradSlot* as, GradSlot* bs, Tensor d) {
  if (as && bs) add_grad(*as, d);
  if (bs)
    add_grad(*bs, std::move(d));
  else if (as)
    add_grad(*as, std::move(d));
}

}  // namespace

Var add(const Var& a, const Var& b) {
  return record_op(sum<false>(a, b, "add"), {&a, &b}, [as = a.slot(), bs = b.slot()](const Tensor& gy) {
    deliver_to_both(as.get(), bs.get(), gy);  // da = db = dy
  });
}

Var add_relu(const Var& a, const Var& b) {
  Tensor y = sum<true>(a, b, "add_relu");
  Tensor saved_y = a.requires_grad() || b.requires_grad() ? y : Tensor();
  return record_op(std::move(y), {&a, &b}, [yv = std::move(saved_y), as = a.slot(), bs = b.slot()](const Tensor& gy) {
    deliver_to_both(as.get(), bs.get(), relu_backward(gy, yv));  // da = db = dy where y > 0
  });
}

}  // namespace toptag
