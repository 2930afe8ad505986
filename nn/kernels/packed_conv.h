// Inference convolutions on channels-last (NHWC) activations with weights packed once, and the few
// other operations a frozen ResNet runs in that layout (nn/inference_plan.h puts them together).
//
// conv_nhwc is an indirect GEMM (nn/kernels/tile.h): no im2col copy, no layout change, bias, residual
// add and ReLU in the same pass as the sums. Its work is cut into chunks of output rows (pixels) times
// panels of output channels; the threads take contiguous runs of them, so at batch 1, where a layer
// has a handful of pixels, the cores split the output channels between them. A convolution too small
// to be worth a second thread runs on one.
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "nn/kernels/isa.h"
#include "nn/kernels/tile.h"
#include "nn/ops/conv2d.h"
#include "nn/ops/pool.h"
#include "nn/tensor.h"

namespace toptag {

// Multiply-adds below which a convolution (direct or Winograd) runs on one thread: waking the second
// costs more.
constexpr int64_t kParallelMinMacs = int64_t{1} << 18;

// A convolution's geometry, whatever its number format.
struct ConvShape {
  int64_t K = 0, C = 0, R = 0, S = 0;  // output and input channels, kernel size
  int stride = 1, pad = 0;

  int64_t taps() const { return R * S; }
  int64_t out_size(int64_t in, int64_t kernel) const { return (in + 2 * pad - kernel) / stride + 1; }
};

// A std::allocator whose resize() leaves new values unwritten, for buffers that are filled whole next:
// channels-last training packs its weights every step, and zeroing each buffer first took a third of
// the packing's time.
template <class T>
struct UninitializedAllocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = UninitializedAllocator<U>;
  };
  UninitializedAllocator() = default;
  template <class U>
  UninitializedAllocator(const UninitializedAllocator<U>&) noexcept {}
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

// A convolution's float32 weights packed for one kernel set.
struct PackedConv : ConvShape {
  const KernelSet* kernels = nullptr;
  int64_t panels = 0;                                         // ceil(K / nr)
  std::vector<float, UninitializedAllocator<float>> weights;  // panels x [R*S taps][C][nr], zero past channel K
  std::vector<float> bias;   // panels x nr, zero past channel K (and zero when the conv has none)
  std::vector<float> zeros;  // C zeros: what a tap in the padding reads

  int64_t panel_size() const { return taps() * C * kernels->nr; }
};

// Packs PyTorch-layout weights (K, C, R, S) and an optional bias (K) for `isa`'s kernels.
PackedConv pack_conv(const Tensor& weight, const Tensor* bias, Conv2dParams params, Isa isa);

// Whether an R x S convolution's input gradient is itself a convolution of its output gradient, with
// padding R-1-pad on every side: stride 1, a square kernel, pad < R. (Another's transposed
// convolution needs different padding on each side, or a stride.)
bool input_gradient_is_convolution(int64_t R, int64_t S, Conv2dParams params);
// Packs that convolution, from the same (K, C, R, S) weights: C outputs from K inputs, every tap
// flipped (r, s -> R-1-r, S-1-s), padding R-1-pad. Throws where input_gradient_is_convolution() is
// false. Channels-last training runs it on the direct kernel (conv2d_nhwc.cpp).
PackedConv pack_conv_input_gradient(const Tensor& weight, Conv2dParams params, Isa isa);
// The (K, C, R, S) weights `conv` was packed from, exactly (packing only moves them).
Tensor unpack_conv_weight(const PackedConv& conv);

// Where a convolution's output goes (conv_nhwc, conv_winograd, conv_nhwc_bfp): a new tensor, or
// over_residual, into the residual's own buffer, whose values the caller gives up (each output stage
// reads a residual value before it writes that place). A ResNet block's last convolution then streams
// one map through memory instead of two: at 224x224 its 3.2 MB maps do not stay in cache, and writing
// a new one first reads it in.
enum class Output { fresh, over_residual };

// The tensor a convolution `op` of x writes: a new one of `shape`, or *residual (over_residual), which
// must not be x's own buffer (other outputs still read it). Checks the residual's shape.
Tensor output_tensor(const Shape& shape, const Tensor& x, const Tensor* residual, Output to, const char* op);

// y = conv(x) + bias [+ residual] [ReLU]. x: (N, H, W, C); y, residual: (N, P, Q, K), all NHWC.
Tensor conv_nhwc(const PackedConv& conv, const Tensor& x, const Tensor* residual, bool relu, Output to = Output::fresh);

// y = maxpool(conv(x) + bias [ReLU]), as ResNet's stem and the max pool after it: the convolution's
// output rows are made a band at a time in a thread's own buffer and pooled from there, so its map
// (the stem's, 3.2 MB at 224x224) never goes through memory. The same bits as
// maxpool_nhwc(conv_nhwc(conv, x, nullptr, relu), pool).
Tensor conv_nhwc_maxpool(const PackedConv& conv, const Tensor& x, bool relu, MaxPool2dParams pool);

// The (output pixel, tap) pairs conv_nhwc computes on x, over the batch: every tap of every pixel, or
// only the taps inside the map where it runs pixel by pixel (nn/kernels/tile_driver.h). Times C * K,
// its multiply-adds.
double conv_nhwc_taps(const PackedConv& conv, const Tensor& x);

// The same contract on the unpacked (K, C, R, S) weights: conv2d_forward_ref's direct loops in
// double, then the residual and the ReLU. The reference the kernels are tested against.
Tensor conv_nhwc_ref(const Tensor& x, const Tensor& weight, const Tensor* bias, Conv2dParams params,
                     const Tensor* residual, bool relu);

}  // namespace toptag
