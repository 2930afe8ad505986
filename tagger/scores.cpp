#include "tagger/scores.h"

#include "nn/ops/softmax.h"

namespace toptag {

Tensor class_probabilities(const Tensor& logits) {
  NoGradGuard no_grad;
  return softmax(Var(logits)).value();
}

}  // namespace toptag
