#include "nn/ops/softmax.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "nn/check.h"

namespace toptag {

namespace {

void check_logits(const Var& logits, const char* op) {
  if (logits.shape().rank() != 2 || logits.shape()[1] < 1)
    fail("{}: logits must be (N, classes), found shape {}", op, logits.shape().str());
}

// Row-wise softmax of (N, K) into out.
void softmax_rows(const float* z, int64_t N, int64_t K, float* out) {
  for (int64_t n = 0; n < N; ++n) {
    const float* row = z + n * K;
    float* p = out + n * K;
    const float max = *std::max_element(row, row + K);
    double sum = 0.0;
    for (int64_t k = 0; k < K; ++k) sum += (p[k] = std::exp(row[k] - max));
    for (int64_t k = 0; k < K; ++k) p[k] = static_cast<float>(p[k] / sum);
  }
}

}  // namespace

Var softmax(const Var& logits) {
  check_logits(logits, "softmax");
  const int64_t N = logits.shape()[0], K = logits.shape()[1];
  Tensor p = Tensor::empty({N, K});
  softmax_rows(logits.value().data(), N, K, p.data());
  Tensor saved_p = logits.requires_grad() ? p : Tensor();
  return record_op(std::move(p), {&logits}, [pv = std::move(saved_p), zs = logits.slot(), N, K](const Tensor& gy) {
    // dz = p * (dy - sum(dy * p)) per row
    Tensor dz = Tensor::empty({N, K});
    for (int64_t n = 0; n < N; ++n) {
      const float* pr = pv.data() + n * K;
      const float* g = gy.data() + n * K;
      double dot = 0.0;
      for (int64_t k = 0; k < K; ++k) dot += static_cast<double>(g[k]) * pr[k];
      for (int64_t k = 0; k < K; ++k) dz.data()[n * K + k] = pr[k] * (g[k] - static_cast<float>(dot));
    }
    add_grad(*zs, std::move(dz));
  });
}

Var softmax_cross_entropy(const Var& logits, std::span<const int64_t> labels) {
  check_logits(logits, "softmax_cross_entropy");
  const int64_t N = logits.shape()[0], K = logits.shape()[1];
  if (static_cast<int64_t>(labels.size()) != N)
    fail("softmax_cross_entropy: {} labels for a batch of {}", labels.size(), N);
  if (N == 0) fail("softmax_cross_entropy: empty batch");
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i] < 0 || labels[i] >= K)
      fail("softmax_cross_entropy: label {} of row {} is not in [0, {})", labels[i], i, K);

  Tensor p = Tensor::empty({N, K});
  softmax_rows(logits.value().data(), N, K, p.data());
  double loss = 0.0;
  const float* z = logits.value().data();
  for (int64_t n = 0; n < N; ++n) {
    // -log p[label] computed as logsumexp(z) - z[label] for accuracy when p is tiny.
    const float* row = z + n * K;
    const float max = *std::max_element(row, row + K);
    double sum = 0.0;
    for (int64_t k = 0; k < K; ++k) sum += std::exp(static_cast<double>(row[k] - max));
    loss += std::log(sum) + max - row[labels[n]];
  }
  Tensor out = Tensor::full({1}, static_cast<float>(loss / static_cast<double>(N)));
  std::vector<int64_t> label_copy(labels.begin(), labels.end());
  return record_op(std::move(out), {&logits},
                   [p, label_copy = std::move(label_copy), zs = logits.slot(), N, K](const Tensor& gy) {
                     // dz = (p - onehot(label)) * dloss / N
                     Tensor dz = Tensor::empty({N, K});
                     const float scale = gy.data()[0] / static_cast<float>(N);
                     for (int64_t n = 0; n < N; ++n)
                       for (int64_t k = 0; k < K; ++k)
                         dz.data()[n * K + k] = (p.data()[n * K + k] - (k == label_copy[n] ? 1.0f : 0.0f)) * scale;
                     add_grad(*zs, std::move(dz));
                   });
}

}  // namespace toptag
