#include "nn/ops/fake_quant.h"

namespace toptag {

Var fake_quantize(const Var& x, const QuantizeFunction& quantize, SteMode ste) {
  Tensor y = Tensor::empty(x.shape());
  Tensor in_range = Tensor::empty(x.shape());
  quantize(x.value(), y, in_range);
  Tensor mask = (x.requires_grad() && ste == SteMode::masked) ? in_range : Tensor();
  return record_op(std::move(y), {&x}, [mask = std::move(mask), xs = x.slot()](const Tensor& gy) {
    // Backward: dx = dy * mask (masked) or dy (identity).
    GradSink sink = grad_sink(*xs, gy.shape());
    const float* g = gy.data();
    const float* m = mask.defined() ? mask.data() : nullptr;
    const int64_t n = gy.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float d = m ? g[i] * m[i] : g[i];
      sink.data[i] = sink.accumulate ? sink.data[i] + d : d;
    }
  });
}

}  // namespace toptag
