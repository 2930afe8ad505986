// A ResNet frozen for inference: every convolution's weights packed once for this CPU's kernels
// (nn/kernels/), activations channels-last (NHWC) from the stem to the average pool, and each
// residual block's add and ReLU fused into its last convolution's output stage.
//
// Built from ResNet::walk, so it follows the network's one description of its topology. The plan
// computes the same function as the model in eval mode with its batch norms folded (to float32
// rounding: the sums run in another order); tests/test_inference_plan.cpp holds it to that.
// Quantized models (layer hooks) are not frozen: they run the float emulation (quantize/).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "nn/kernels/packed_conv.h"
#include "nn/kernels/winograd.h"
#include "nn/resnet.h"

namespace toptag {

class FrozenResNet {
 public:
  // Throws toptag::Error when the model cannot be frozen: a batch norm not folded, or a layer with
  // hooks (a quantized model).
  // winograd: run 3x3 stride-1 convolutions with enough tiles as Winograd F(2x2, 3x3)
  // (nn/kernels/winograd.h); false runs every convolution on the direct kernel.
  explicit FrozenResNet(const ResNet& model, Isa isa = active_isa(), bool winograd = true);

  // images (N, in_channels, H, W), NCHW as everywhere else -> features (N, feature_dim)
  Tensor features(const Tensor& images) const;
  // features (N, feature_dim) -> logits (N, classes)
  Tensor head(const Tensor& features) const;

  // "avx512 f32 12x32 (instruction set avx512), 53 convolutions (13 also as Winograd F(2x2,3x3)) + 2
  // linear layers packed (165.3 MB)"
  std::string describe() const;
  const KernelSet& kernel_set() const { return *kernels_; }

 private:
  // Where an operation reads or writes: the running activation, the current block's input (kept for
  // its shortcut and residual), or the block's shortcut output.
  enum class Slot { current, block_input, shortcut };
  struct Op {
    bool pool = false;  // a max pool (else a convolution)
    MaxPool2dParams pool_params;
    PackedConv conv;
    std::optional<WinogradConv> winograd;  // 3x3 stride-1 convolutions: also packed for Winograd
    bool relu = false;
    bool starts_block = false;  // copy `current` into `block_input` first
    Slot in = Slot::current, out = Slot::current;
    bool add_residual = false;  // + residual (the block's shortcut or its input), before the ReLU
    Slot residual = Slot::block_input;
  };

  static Op conv_op(const LayerStep& step, Isa isa, bool winograd);
  // Appends a block's convolutions: the shortcut first, the residual add and ReLU fused into the last.
  void add_block(const LayerStep& end, std::vector<Op> main_path, std::optional<Op> shortcut);

  const KernelSet* kernels_;
  int64_t in_channels_ = 0, feature_dim_ = 0;
  std::vector<Op> ops_;
  PackedConv fc1_, fc2_;  // the head, as 1x1 convolutions over a 1x1 image
  bool fc1_relu_ = true;
};

}  // namespace toptag
