// Winograd F(2x2, 3x3) for 3x3, stride-1, padding-1 convolutions over NHWC activations (Lavin and
// Gray 2016): each 2x2 block of outputs comes from a 4x4 input tile as
//   Y = A^T [ (G g G^T) . (B^T d B) ] A
// so the 36 multiply-adds per output pair of channels of the direct form become 16, done as 16
// independent GEMMs (one per point of the 4x4 transformed tile) by the same tile kernels as
// conv_nhwc (nn/kernels/tile.h). The transforms are additions only, save G's halves; the input and
// output transforms are each instruction set's (KernelSet::winograd_input, winograd_output), a vector
// of channels at a time.
//
// Two forms. Where the transformed weights fit a core's cache (up to 1 MB: 128 x 128 channels), the
// layer runs fused, in blocks of tiles, each block transformed, multiplied and transformed back while
// its 16 points stay in cache (about 384 KB a block). Larger layers run layer by layer: every tile's
// transform, the 16 GEMMs, every tile's output. At 224x224, batch 1, fusing took layer1's 3x3 (64
// channels, 56x56) from 0.37-0.40 ms to 0.30-0.32 on AVX-512 (bench_conv BM_Winograd, Zen 5).
//
// Where it wins: a layer with enough tiles to be bound by arithmetic. Its transformed weights are
// 16/9 the size of the direct ones, so a layer bound by reading its weights (batch 1 on small maps)
// runs the direct kernel instead, as does one where the direct kernel, skipping the taps in the
// padding, computes about as few products; FrozenResNet (nn/inference_plan.cpp winograd_pays)
// chooses (bench_conv measures both).
// Error: the transforms round in float32; against the direct kernel the difference is a few units
// of float32 rounding of the sums (tests/test_kernels.cpp states and checks the bound).
#pragma once

#include <vector>

#include "nn/kernels/packed_conv.h"

namespace toptag {

struct WinogradConv {
  const KernelSet* kernels = nullptr;
  int64_t K = 0, C = 0, panels = 0;
  std::vector<float> weights;  // 16 points x panels x [C][nr]: U = G g G^T, packed like a 1x1 conv
  std::vector<float> bias;     // panels x nr
  std::vector<float> zeros;    // C zeros: what a tile reads past the map's edge

  int64_t point_size() const { return panels * C * kernels->nr; }
};
int64_t toptag_packed_bytes(const WinogradConv& conv);  // its weights (PackedOnFirstUse)

// Whether conv is one Winograd F(2x2, 3x3) computes: 3x3, stride 1, padding 1.
bool winograd_applies(const PackedConv& conv);

// Transforms and packs the (K, C, 3, 3) weights of a convolution winograd_applies() to.
WinogradConv pack_winograd(const Tensor& weight, const Tensor* bias, Isa isa);
// The same from the direct kernel's packed weights and bias, for its kernel set.
WinogradConv pack_winograd(const PackedConv& direct);

// The same contract as conv_nhwc (nn/kernels/packed_conv.h).
Tensor conv_winograd(const WinogradConv& conv, const Tensor& x, const Tensor* residual, bool relu,
                     Output to = Output::fresh);

// 2x2 tiles of a P x Q map, over a batch of N.
int64_t winograd_tiles(int64_t N, int64_t P, int64_t Q);

}  // namespace toptag
