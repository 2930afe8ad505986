#include "nn/ops/fake_quant.h"

namespace toptag {

Var fake_quantize(const Var& x, const QuantizeFunction& quantize, SteMode ste) {
  Tensor y = Tensor::empty(x.shape());
  Tensor in_range = Tensor::empty(x.shape());
  quantize(x.value(), y, in_range);
  Tensor mask = (x.requires_grad() && ste == SteMode::masked) ? in_range : Tensor();
  return record_op(std::move(y), {&x}, [mask = std::move(mask), xs = x.slot()](const Tensor& gy) {
    // Backward: dx = dy * mask (masked) or dy (identity).
    if (!mask.defined()) return add_grad(*xs, gy);
    Tensor dx = Tensor::empty(gy.shape());
    const float* g = gy.data();
    const float* m = mask.data();
    float* d = dx.data();
    const int64_t n = gy.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) d[i] = g[i] * m[i];
    add_grad(*xs, std::move(dx));
  });
}

}  // namespace toptag
