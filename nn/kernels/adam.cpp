#include <cmath>

#include "nn/kernels/tile.h"

namespace toptag::kernels_ref {

void adam(const AdamStep& a, float* w, const float* g, float* m, float* v, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    m[j] = a.b1 * m[j] + (1.0f - a.b1) * g[j];
    v[j] = a.b2 * v[j] + (1.0f - a.b2) * g[j] * g[j];
    w[j] = w[j] * a.decay - a.step_size * m[j] / (std::sqrt(v[j]) * a.inv_sqrt_bc2 + a.eps);
  }
}

}  // namespace toptag::kernels_ref
