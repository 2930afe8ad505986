// Fake quantization: y = q(x) in the forward pass, with a straight-through estimator (STE) for the
// gradient, so a model can be fine-tuned while it computes with quantized weights and activations.
//   masked STE:   dx = dy where x lies inside the format's representable range, 0 outside
//                 (PyTorch's and TensorFlow's fake-quant gradient);
//   identity STE: dx = dy everywhere (QKeras).
// The quantizer itself (fixed point, block floating point, int8) lives in quantize/.
#pragma once

#include <functional>

#include "nn/autograd.h"

namespace toptag {

enum class SteMode { masked, identity };

// Fills y = q(x) (same shape) and in_range (1 where x is representable, 0 where it saturates or wraps).
using QuantizeFunction = std::function<void(const Tensor& x, Tensor& y, Tensor& in_range)>;

// x: any -> y: same shape.
Var fake_quantize(const Var& x, const QuantizeFunction& quantize, SteMode ste);

}  // namespace toptag
