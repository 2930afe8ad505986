#include "nn/ops/linear.h"

#include "nn/check.h"
#include "nn/gemm.h"

namespace toptag {

Var linear(const Var& x, const Var& w, const Var* bias) {
  if (x.shape().rank() != 2) fail("linear: input must be (N, features), found shape {}", x.shape().str());
  if (w.shape().rank() != 2) fail("linear: weight must be (out, in), found shape {}", w.shape().str());
  const int64_t N = x.shape()[0], I = x.shape()[1], O = w.shape()[0];
  if (w.shape()[1] != I)
    fail("linear: input has {} features but the weight {} expects {}", I, w.shape().str(), w.shape()[1]);
  if (bias) expect_shape(bias->value(), Shape{O}, "linear bias");

  Tensor y = Tensor::empty({N, O});
  if (bias) {
    for (int64_t n = 0; n < N; ++n) std::copy_n(bias->value().data(), O, y.data() + n * O);
  }
  gemm(false, true, N, O, I, 1.0f, x.value().data(), I, w.value().data(), I, bias ? 1.0f : 0.0f, y.data(), O);

  Tensor saved_x = w.requires_grad() ? x.value() : Tensor();
  Tensor saved_w = x.requires_grad() ? w.value() : Tensor();
  std::shared_ptr<GradSlot> bs = bias ? bias->slot() : nullptr;
  return record_op(
      std::move(y), {&x, &w, bias},
      [xv = std::move(saved_x), wv = std::move(saved_w), xs = x.slot(), ws = w.slot(), bs, N, I, O](const Tensor& gy) {
        if (xs) {  // dx (N, I) = dy (N, O) * W (O, I)
          Tensor dx = Tensor::empty({N, I});
          gemm(false, false, N, I, O, 1.0f, gy.data(), O, wv.data(), I, 0.0f, dx.data(), I);
          add_grad(*xs, std::move(dx));
        }
        if (ws) {  // dW (O, I) = dy^T (O, N) * x (N, I)
          Tensor dw = Tensor::empty({O, I});
          gemm(true, false, O, I, N, 1.0f, gy.data(), O, xv.data(), I, 0.0f, dw.data(), I);
          add_grad(*ws, std::move(dw));
        }
        if (bs) {  // db[o] = sum over n of dy[n, o]
          Tensor db = Tensor::empty({O});
          for (int64_t o = 0; o < O; ++o) {
            double sum = 0.0;
            for (int64_t n = 0; n < N; ++n) sum += gy.data()[n * O + o];
            db.data()[o] = static_cast<float>(sum);
          }
          add_grad(*bs, std::move(db));
        }
      });
}

}  // namespace toptag
