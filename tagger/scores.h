// How a tagger scores jets: the softmax of its head's logits gives the class probabilities, and a
// jet's score is its probability of top. toptag predict (tagger/inference.cpp) and toptag serve
// (serve/engine.cpp) both call class_probabilities, so their scores agree bit for bit; the exported
// ONNX graph (export/onnx_export.cpp) ends in the Softmax node that computes the same function.
#pragma once

#include <cstdint>

#include "nn/tensor.h"

namespace toptag {

// The classes, in the order of the head's outputs.
constexpr int64_t kQcdClass = 0;
constexpr int64_t kTopClass = 1;

// logits: (N, K) -> probabilities (N, K): each row's softmax (max-subtracted), summing to one.
// A NaN logit makes its row NaN (nn/ops/softmax.h); it never becomes an ordinary score.
Tensor class_probabilities(const Tensor& logits);

}  // namespace toptag
