// Softmax for prediction and the fused softmax cross-entropy loss for training.
#pragma once

#include <cstdint>
#include <span>

#include "nn/autograd.h"

namespace toptag {

// logits: (N, K) -> probabilities (N, K), each row summing to one (max-subtracted for stability).
// Backward: dz = p * (dy - sum(dy * p)).
Var softmax(const Var& logits);

// logits: (N, K), labels: N class indices in [0, K) -> loss: (1), the mean over the batch of
// -log softmax(logits)[label]. Backward, fused: dz = (softmax(z) - onehot(label)) * dloss / N.
Var softmax_cross_entropy(const Var& logits, std::span<const int64_t> labels);

}  // namespace toptag
