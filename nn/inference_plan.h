// A ResNet frozen for inference: every convolution's weights packed once for this CPU's kernels
// (nn/kernels/), activations channels-last (NHWC) from the stem to the average pool, and each
// residual block's add and ReLU fused into its last convolution's output stage.
//
// Built from ResNet::walk, so it follows the network's one description of its topology. The plan
// computes the same function as the model in eval mode with its batch norms folded (to float32
// rounding: the sums run in another order); tests/test_inference_plan.cpp holds it to that.
//
// A quantized model is frozen from a description of each layer (LayerQuantization, which quantize/
// fills: nn knows no format by name). A layer whose weights and inputs are both block floating point
// the integer kernels can run (nn/kernels/bfp.h) runs on them; every other layer runs the float
// kernels on its decoded weights, its input fake-quantized first. int8 layers run on the same integer
// tiles (on AVX2 unless a weight is -128: int8_tile_takes in nn/kernels/bfp.h). All compute what the float
// emulation (the layers' hooks) computes, to float32 rounding of the sums.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "nn/kernels/bfp.h"
#include "nn/kernels/packed_conv.h"
#include "nn/kernels/packed_on_first_use.h"
#include "nn/kernels/winograd.h"
#include "nn/resnet.h"

namespace toptag {

// How one layer of a quantized model computes.
struct LayerQuantization {
  Tensor weight;  // the quantized weight's values, decoded: what the float kernels run
  // Fake-quantizes the layer's input, channels last ((N, H, W, C) or (N, C)); empty: float inputs.
  std::function<Tensor(const Tensor&)> quantize_input;
  // Both operands block floating point: the weight's exact encoding, and the input's format.
  struct Bfp {
    std::vector<int32_t> mantissas;  // the weight's shape
    std::vector<int8_t> exponents;   // [K][blocks][taps]
    BlockFormat weight, input;
  };
  std::optional<Bfp> bfp;
  // int8 weights and activations: the weight's integers and per-channel scales, the input's range.
  // Fixed point of at most 8 bits takes the same path: integers value / LSB, the LSBs as scales, and
  // the input first through quantize_input (its rounding and overflow modes), whose multiples of the
  // LSB the records then hold exactly (zero point 128 for a signed format).
  struct Int8 {
    std::vector<int32_t> weights;  // the weight's shape
    std::vector<float> scales;     // per output channel
    AffineU8 input;
    bool fake_quantize_first = false;  // fixed point: quantize_input, then the records
  };
  std::optional<Int8> int8;
};

// Every conv and linear layer of a quantized model, by state_dict prefix ("layer1.0.conv2", "fc1").
using LayerQuantizations = std::map<std::string, LayerQuantization>;

// One layer's share of the plan's runs while its layers are timed (FrozenResNet::time_layers).
struct LayerTime {
  std::string layer;   // the state_dict prefix ("conv1", "layer2.0.downsample.0", "fc1") or "maxpool"
  std::string kernel;  // what ran it the last time: "f32 direct", "f32 Winograd F(2x2,3x3)", "int8 words", ...
  std::string output;  // its first timed output's shape, channels last: "64x10x10x256"
  double macs = 0;     // multiply-adds of the direct convolution, summed over the runs (Winograd computes fewer)
  double seconds = 0;  // wall time, summed over the runs
  int64_t calls = 0;
};

class FrozenResNet {
 public:
  // Throws toptag::Error when the model cannot be frozen: a batch norm not folded, a layer with hooks
  // (a quantized model) and no `quantized` description, or a layer `quantized` does not describe.
  // winograd: run 3x3 stride-1 convolutions with enough tiles as Winograd F(2x2, 3x3)
  // (nn/kernels/winograd.h); false runs every convolution on the direct kernel.
  explicit FrozenResNet(const ResNet& model, Isa isa = active_isa(), bool winograd = true,
                        const LayerQuantizations* quantized = nullptr);

  // images (N, in_channels, H, W), NCHW as everywhere else -> features (N, feature_dim)
  Tensor features(const Tensor& images) const;
  // The same in two parts, for a server that runs each request's early layers as it comes and the
  // late ones once for all the requests gathered meanwhile (serve/engine.h): the late layers hold
  // most of the weights, whose reading bounds a small batch, and the early ones most of the
  // activations, whose work grows with the batch. features(x) is finish_features(begin_features(x)),
  // and the rows of several begin_features results may be concatenated (along N) in between.
  // The split is at the start of layer3: ResNet-50 has 94% of its weights behind it, and at 40x40
  // a third of its time before it.
  Tensor begin_features(const Tensor& images) const;    // -> (N, H', W', C'), channels-last
  Tensor finish_features(const Tensor& partial) const;  // begin_features' output -> (N, feature_dim)
  // features (N, feature_dim) -> logits (N, classes)
  Tensor head(const Tensor& features) const;

  // "avx512 f32 12x32 (instruction set avx512), 53 convolutions (10 may run as Winograd F(2x2,3x3),
  // packed on first use: 0 so far) + 2 linear layers packed (102.2 MB)"; a quantized model adds how
  // many layers run on integer kernels.
  std::string describe() const;
  const KernelSet& kernel_set() const { return *kernels_; }

  // Times every layer of the runs from now on (toptag perf --local --profile): on clears the times so
  // far; off stops. Costs two clock reads and a lock a layer while on. Meant for one caller at a time:
  // the layers of concurrent runs add up their times. (nn/profile.h's ProfileScope times the phases
  // of a training step, each without the phases nested in it; this times the plan's layers whole.)
  void time_layers(bool on) const;
  // The layers timed so far, in forward order (those that ran at least once).
  std::vector<LayerTime> layer_times() const;

 private:
  // Where an operation reads or writes: the running activation, the current block's input (kept for
  // its shortcut and residual), or the block's shortcut output.
  enum class Slot { current, block_input, shortcut };
  struct Op {
    std::string name;   // the state_dict prefix, or "maxpool"
    bool pool = false;  // a max pool (else a convolution)
    MaxPool2dParams pool_params;
    PackedConv conv;  // float32 weights (a quantized layer's decoded ones)
    // A 3x3 stride-1 layer's Winograd weights, packed from its direct ones the first time an input
    // makes Winograd pay. At 40x40 none does: ResNet-50's would be 66 MB held for nothing.
    std::unique_ptr<PackedOnFirstUse<WinogradConv>> winograd;
    std::optional<PackedBfpConv> bfp;  // integer (block floating point or int8): runs instead of conv
    std::function<Tensor(const Tensor&)> quantize_input;  // the quantized layer's input quantizer
    bool integer_quantizes_first = false;                 // fixed point: the integer path runs it too
    // The head's first layer also keeps the float path: head() takes features from outside (a
    // features file), which need not be non-negative as the integer block floating point path needs.
    bool float_if_negative = false;
    bool input_nonnegative = false;  // the input follows a ReLU
    bool relu = false;
    bool starts_block = false;  // copy `current` into `block_input` first
    Slot in = Slot::current, out = Slot::current;
    bool add_residual = false;  // + residual (the block's shortcut or its input), before the ReLU
    Slot residual = Slot::block_input;
  };

  Op conv_op(const LayerStep& step, bool input_nonnegative) const;
  Op linear_op(const LayerStep& step, bool input_nonnegative, bool head_input) const;
  // A quantized layer: its float path, and its integer path where the kernels run it.
  void quantize_op(Op& op, const std::string& name, const Tensor* bias, Conv2dParams params,
                   bool keep_float = false) const;
  // Appends a block's convolutions: the shortcut first, the residual add and ReLU fused into the last.
  void add_block(const LayerStep& end, std::vector<Op> main_path, std::optional<Op> shortcut);
  // One convolution (or linear layer, or max pool) on its input, by whichever path it was packed for.
  // `cache`: the block floating point records of the last input quantized, for a layer reading it again.
  // `to`: whether the output may go over the residual (packed_conv.h Output). `kernel`, when given, is
  // set to what ran it (LayerTime::kernel).
  static Tensor run(const Op& op, const Tensor& in, const Tensor* residual, Output to,
                    QuantizedInputCache* cache = nullptr, const char** kernel = nullptr);
  // run(), timed into times_[index] while time_layers is on.
  Tensor run_timed(size_t index, const Op& op, const Tensor& in, const Tensor* residual, Output to = Output::fresh,
                   QuantizedInputCache* cache = nullptr) const;
  // Whether ops_[i] is a float convolution followed by a max pool that can run in its output stage
  // (conv_nhwc_maxpool), both within [i, end): the stem.
  bool pool_follows(size_t i, size_t end) const;
  // ops_[i] and the max pool after it as one, timed into both layers' entries while time_layers is on.
  Tensor run_pooled(size_t i, const Tensor& in) const;
  // Adds one run of layer `index` to times_ (when timing is still on).
  void record_time(size_t index, const char* kernel, const Tensor& out, double macs, double seconds) const;
  // ops_[begin, end) on a channels-last activation; begin starts a block (or is 0).
  Tensor run_ops(Tensor current, size_t begin, size_t end) const;

  const KernelSet* kernels_;
  Isa isa_;
  bool winograd_;
  const LayerQuantizations* quantized_;  // during construction only
  bool quantized_plan_ = false;
  int64_t in_channels_ = 0, feature_dim_ = 0;
  std::vector<Op> ops_;
  // ops_[split_] starts layer3: where begin_features ends (0: no such block, which no ResNet of
  // nn/resnet.h lacks), and the channels there.
  size_t split_ = 0;
  int64_t split_channels_ = 0;
  Op fc1_, fc2_;  // the head, as 1x1 convolutions over a 1x1 image

  // Layer timing: one entry per op of ops_, then fc1_ and fc2_, under the mutex; timing_ says whether
  // runs record. (Winograd's and int8's word panels, packed on first use, change after construction too.)
  mutable std::atomic<bool> timing_{false};
  mutable std::mutex times_mutex_;
  mutable std::vector<LayerTime> times_;
};

}  // namespace toptag
