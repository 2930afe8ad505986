#include "nn/kernels/packed_conv.h"

#include <omp.h>

#include <algorithm>

#include "nn/blas.h"
#include "nn/check.h"
#include "nn/kernels/tile_driver.h"
#include "nn/ops/layout.h"
#include "nn/parallel.h"
#include "nn/profile.h"

namespace toptag {

namespace {

// --- the reference kernel set: portable loops, the same contract as the SIMD tiles ------------------

constexpr int kRefMr = kernels_ref::kMr, kRefNr = kernels_ref::kNr;

void tile_f32_ref(const TileArgs& t) {
  float sums[kRefMr][kRefNr] = {};
  const float* b = static_cast<const float*>(t.panel);
  for (int tap = 0; tap < t.taps; ++tap) {
    if (t.tap_index) b = static_cast<const float*>(t.panel) + t.tap_index[tap] * t.channels * kRefNr;
    for (int64_t c = 0; c < t.channels; ++c, b += kRefNr)
      for (int i = 0; i < t.row_count; ++i) {
        const float a = static_cast<const float*>(t.rows[i * t.taps + tap])[c];
        for (int j = 0; j < kRefNr; ++j) sums[i][j] += a * b[j];
      }
  }
  const OutputStage& st = t.stage;
  for (int i = 0; i < t.row_count; ++i)
    for (int j = 0; j < t.col_count; ++j) {
      float v = sums[i][j];
      if (st.scale) v *= st.scale[j];
      if (st.bias) v += st.bias[j];
      if (st.residual) v += st.residual[i * st.ld_residual + j];
      if (st.relu && v < 0.0f) v = 0.0f;
      t.out[i * t.ld_out + j] = v;
    }
}

const KernelSet kRefSet{Isa::ref,
                        "ref f32 4x8",
                        kRefMr,
                        kRefNr,
                        tile_f32_ref,
                        "ref u8*s8 4x8",
                        kRefMr,
                        kernels_ref::tile_bfp,
                        true,
                        kernels_ref::bfp_block_max,
                        kernels_ref::bfp_block_bytes,
                        /*bfp_tap_index=*/true,
                        /*int8_signed_bytes=*/false,
                        /*tile_int8_words=*/nullptr,
                        kernels_ref::int8_bytes,
                        kernels_ref::int8_words,
                        kernels_ref::tile_gemm,
                        kernels_ref::winograd_input,
                        kernels_ref::winograd_output,
                        kernels_ref::adam};

// A layer with few input channels (the stem: 1 or 3) would give the kernel reductions of 1 to 3 values
// per tap. Each output row is read instead as R kernel rows: kernel row r's S taps read S adjacent
// pixels, S * C floats that lie side by side in x (NHWC), which the kernel reads as tap r of S * C
// channels. The packed panel has that same order ((r * S + s) * C + c). Only a kernel row that
// crosses the map's left or right edge is copied, with zeros for the padding.
constexpr int64_t kKernelRowMaxChannels = 8;
inline bool reads_kernel_rows(const PackedConv& cv) {
  return cv.C <= kKernelRowMaxChannels && cv.taps() > 1;
}

// Output rows [m0, m0 + count) of such a layer as R kernel rows each, out[i * R + r]. A kernel row
// inside the map is read where it lies in x; one in the padding above or below reads `zeros` (S * C
// of them); one that crosses the left or right edge is copied into its place in `copies` (row i's R
// spans of S * C floats).
void fill_kernel_rows(const PackedConv& cv, const OutputGrid& g, const float* x, const float* zeros, int64_t m0,
                      int64_t count, float* copies, const void** out) {
  const int64_t C = cv.C, span = cv.S * C, PQ = g.P * g.Q;
  // Output row m0 + i is pixel (p, q) of image n, stepped along without dividing for every row.
  int64_t n = m0 / PQ, p = (m0 % PQ) / g.Q, q = m0 % g.Q;
  for (int64_t i = 0; i < count; ++i, ++q) {
    if (q == g.Q) {
      q = 0;
      if (++p == g.P) {
        p = 0;
        ++n;
      }
    }
    const int64_t w0 = q * cv.stride - cv.pad;
    // The part of each kernel row inside the map: [first, end) of its span.
    const int64_t first = std::clamp<int64_t>(-w0, 0, cv.S) * C, end = std::clamp<int64_t>(g.W - w0, 0, cv.S) * C;
    for (int64_t r = 0; r < cv.R; ++r) {
      const int64_t h = p * cv.stride - cv.pad + r;
      const void** to = out + i * cv.R + r;
      if (h < 0 || h >= g.H || first >= end) {
        *to = zeros;
        continue;
      }
      const int64_t from = ((n * g.H + h) * g.W + w0) * C;  // left of the image row's start where w0 < 0
      if (first == 0 && end == span) {
        *to = x + from;
        continue;
      }
      float* copy = copies + (i * cv.R + r) * span;
      for (int64_t j = 0; j < first; ++j) copy[j] = 0.0f;
      for (int64_t j = first; j < end; ++j) copy[j] = x[from + j];
      for (int64_t j = end; j < span; ++j) copy[j] = 0.0f;
      *to = copy;
    }
  }
}

// Whether conv_nhwc runs a layer pixel by pixel (tile_driver.h): not one read as kernel rows.
bool runs_pixel_major(const PackedConv& cv, const OutputGrid& g) {
  return !reads_kernel_rows(cv) && pixel_major(cv, g);
}

}  // namespace

double conv_nhwc_taps(const PackedConv& cv, const Tensor& x) {
  const OutputGrid g = output_grid(cv, x, "conv_nhwc_taps");
  const double all = static_cast<double>(g.rows() * cv.taps());
  return runs_pixel_major(cv, g) ? all * taps_inside(cv, g) : all;
}

OutputGrid output_grid(const ConvShape& cv, const Tensor& x, const char* op) {
  if (x.rank() != 4 || x.dim(3) != cv.C) fail("{}: input must be (N, H, W, {}), found {}", op, cv.C, x.shape().str());
  const OutputGrid g{x.dim(0), x.dim(1), x.dim(2), cv.out_size(x.dim(1), cv.R), cv.out_size(x.dim(2), cv.S)};
  if (g.P < 1 || g.Q < 1) fail("{}: input {} is smaller than the {}x{} kernel", op, x.shape().str(), cv.R, cv.S);
  return g;
}

void fill_rows(const ConvShape& cv, const OutputGrid& g, const PixelTable& px, int64_t m0, int64_t count,
               const void** rows) {
  const int64_t PQ = g.P * g.Q;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t m = m0 + i, n = m / PQ, p = (m % PQ) / g.Q, q = m % g.Q;
    const void** out = rows + i * cv.taps();
    for (int64_t r = 0; r < cv.R; ++r) {
      const int64_t h = p * cv.stride - cv.pad + r;
      for (int64_t s = 0; s < cv.S; ++s) {
        const int64_t w = q * cv.stride - cv.pad + s;
        const bool inside = h >= 0 && h < g.H && w >= 0 && w < g.W;
        out[r * cv.S + s] = inside ? px.base + ((n * g.H + h) * g.W + w) * px.stride : px.zeros;
      }
    }
  }
}

const KernelSet& kernels(Isa isa) {
#ifdef TOPTAG_X86_KERNELS
  switch (isa) {
    case Isa::avx512: {
      // VNNI is a separate CPU feature: without it the AVX-512 set runs AVX2's block floating point tile.
      static const KernelSet set = [] {
        KernelSet s = kernels_avx512::set;
        if (detect_cpu().avx512vnni) {
          s.bfp_name = "avx512-vnni u8*s8 12x32";
          s.bfp_mr = 12;
          s.tile_bfp_full_bytes = true;
          s.int8_signed_bytes = false;
          s.tile_bfp = kernels_avx512_vnni::tile_bfp;
          s.bfp_tap_index = true;
          s.tile_int8_words = nullptr;  // VPDPBUSD multiplies the bytes exactly, at the words' rate
        }
        return s;
      }();
      return set;
    }
    case Isa::avx2:
      return kernels_avx2::set;
    case Isa::ref:
      break;
  }
#else
  (void)isa;  // cpu_supports() never admits avx2 or avx512 off x86
#endif
  return kRefSet;
}

namespace {

// A PackedConv of `shape` for isa's kernels: its weights allocated (every value is then written by
// the caller), its bias and zeros set.
PackedConv packed_shell(const ConvShape& shape, const Tensor* bias, Isa isa) {
  PackedConv cv;
  static_cast<ConvShape&>(cv) = shape;
  cv.kernels = &kernels(isa);
  const int64_t nr = cv.kernels->nr;
  cv.panels = (cv.K + nr - 1) / nr;
  cv.weights.resize(static_cast<size_t>(cv.panels * cv.panel_size()));
  cv.bias.assign(static_cast<size_t>(cv.panels * nr), 0.0f);
  if (bias) {
    expect_shape(*bias, Shape{cv.K}, "pack_conv bias");
    std::copy(bias->data(), bias->data() + cv.K, cv.bias.begin());
  }
  cv.zeros.assign(static_cast<size_t>(cv.C), 0.0f);
  return cv;
}

// Fills the packed rows of every panel: source(p, i), for i < rows_per_panel, gives a row of panel p
// (which) and where its nr values lie (in[j * ld], j < nr; zeros past the panel's last channel). The
// sources visit the weights in memory order, so that a row's strided reads hit lines the rows just
// before loaded: ResNet-50's 2.36M weights of a 512-channel 3x3 in 0.4 ms on 2 threads (Intel Xeon),
// where visiting them in packed order (each line loaded 9 times) took twice that, and scattering each
// output channel's values into the panel four times. Parallel over the panels: training packs every
// step.
struct PackedRow {
  const float* in;
  int64_t ld;
  int64_t row;
};

// Panel p's rows; NR known, so the reads unroll.
template <int64_t NR, class Source>
void fill_panel(float* __restrict panel, int64_t p, int64_t rows, int64_t cols, const Source& source) {
  for (int64_t i = 0; i < rows; ++i) {
    const PackedRow r = source(p, i);
    const float* __restrict from = r.in;
    float* __restrict out = panel + r.row * NR;
    if (cols == NR) {
      for (int64_t j = 0; j < NR; ++j) out[j] = from[j * r.ld];
    } else {
      for (int64_t j = 0; j < cols; ++j) out[j] = from[j * r.ld];
      for (int64_t j = cols; j < NR; ++j) out[j] = 0.0f;
    }
  }
}

template <class Source>
void fill_panels(PackedConv& cv, int64_t rows_per_panel, const Source& source) {
  const int64_t nr = cv.kernels->nr;
  if (nr != 32 && nr != 16 && nr != kernels_ref::kNr) fail("pack_conv: no packing for panels {} wide", nr);
  float* const packed = cv.weights.data();
#pragma omp parallel for schedule(static) if (cv.weights.size() > 65536)
  for (int64_t p = 0; p < cv.panels; ++p) {
    const int64_t cols = std::min(nr, cv.K - p * nr);
    float* panel = packed + p * cv.panel_size();
    if (nr == 32)
      fill_panel<32>(panel, p, rows_per_panel, cols, source);
    else if (nr == 16)
      fill_panel<16>(panel, p, rows_per_panel, cols, source);
    else
      fill_panel<kernels_ref::kNr>(panel, p, rows_per_panel, cols, source);
  }
}

}  // namespace

PackedConv pack_conv(const Tensor& weight, const Tensor* bias, Conv2dParams params, Isa isa) {
  if (weight.rank() != 4) fail("pack_conv: weight must be (K,C,R,S), found {}", weight.shape().str());
  ConvShape shape;
  shape.K = weight.dim(0);
  shape.C = weight.dim(1);
  shape.R = weight.dim(2);
  shape.S = weight.dim(3);
  shape.stride = params.stride;
  shape.pad = params.padding;
  PackedConv cv = packed_shell(shape, bias, isa);
  // Packed row t C + c of panel p: input channel c at tap t of output channels [p nr, p nr + nr),
  // visited c by c (a channel's taps lie together).
  const int64_t nr = cv.kernels->nr, taps = cv.taps(), C = cv.C;
  const float* w = weight.data();
  fill_panels(cv, taps * C, [=](int64_t p, int64_t i) {
    const int64_t c = i / taps, t = i % taps;
    return PackedRow{w + (p * nr * C + c) * taps + t, C * taps, t * C + c};
  });
  return cv;
}

bool input_gradient_is_convolution(int64_t R, int64_t S, Conv2dParams params) {
  return params.stride == 1 && R == S && params.padding < R;
}

PackedConv pack_conv_input_gradient(const Tensor& weight, Conv2dParams params, Isa isa) {
  if (weight.rank() != 4) fail("pack_conv_input_gradient: weight must be (K,C,R,S), found {}", weight.shape().str());
  if (!input_gradient_is_convolution(weight.dim(2), weight.dim(3), params))
    fail(
        "pack_conv_input_gradient: the input gradient of a {}x{} convolution with stride {} and padding {} is "
        "no convolution (it needs stride 1, a square kernel and padding under its size)",
        weight.dim(2), weight.dim(3), params.stride, params.padding);
  ConvShape back;
  back.K = weight.dim(1);
  back.C = weight.dim(0);
  back.R = weight.dim(2);
  back.S = weight.dim(3);
  back.pad = static_cast<int>(back.R - 1 - params.padding);
  PackedConv cv = packed_shell(back, nullptr, isa);
  // Packed row t K + k of panel p: the gradient's channels [p nr, p nr + nr) from output channel k at
  // tap t, which is the forward's tap taps-1-t (flipped both ways); visited k by k.
  const int64_t nr = cv.kernels->nr, taps = cv.taps(), K = back.C, C = back.K;
  const float* w = weight.data();
  fill_panels(cv, taps * K, [=](int64_t p, int64_t i) {
    const int64_t k = i / taps, t = i % taps;
    return PackedRow{w + (k * C + p * nr) * taps + (taps - 1 - t), taps, t * K + k};
  });
  return cv;
}

Tensor unpack_conv_weight(const PackedConv& cv) {
  const int64_t nr = cv.kernels->nr, taps = cv.taps();
  Tensor w = Tensor::empty({cv.K, cv.C, cv.R, cv.S});
  for (int64_t k = 0; k < cv.K; ++k) {
    const float* panel = cv.weights.data() + (k / nr) * cv.panel_size() + k % nr;
    for (int64_t c = 0; c < cv.C; ++c)
      for (int64_t t = 0; t < taps; ++t) w.data()[(k * cv.C + c) * taps + t] = panel[(t * cv.C + c) * nr];
  }
  return w;
}

Tensor output_tensor(const Shape& shape, const Tensor& x, const Tensor* residual, Output to, const char* op) {
  if (residual) expect_shape(*residual, shape, fmt::format("{} residual", op));
  if (to == Output::fresh) return Tensor::empty(shape);
  if (!residual) fail("{}: asked to write over a residual it was not given", op);
  if (residual->shares_storage_with(x)) fail("{}: asked to write over a residual that is its own input", op);
  return *residual;
}

Tensor conv_nhwc(const PackedConv& cv, const Tensor& x, const Tensor* residual, bool relu, Output to) {
  const OutputGrid g = output_grid(cv, x, "conv_nhwc");
  Tensor y = output_tensor({g.N, g.P, g.Q, cv.K}, x, residual, to, "conv_nhwc");
  if (y.numel() == 0) return y;  // an empty batch
  ProfileScope profile("conv nhwc");

  const KernelSet& ks = *cv.kernels;
  const int64_t taps = cv.taps();
  // A layer with few input channels is read as kernel rows (fill_kernel_rows): R pointers per output
  // row, of S * C channels each.
  const bool kernel_rows = reads_kernel_rows(cv);
  const int64_t row_taps = kernel_rows ? cv.R : taps, row_channels = kernel_rows ? cv.S * cv.C : cv.C;
  const PixelTable px{reinterpret_cast<const char*>(x.data()), cv.C * static_cast<int64_t>(sizeof(float)),
                      cv.zeros.data()};
  if (runs_pixel_major(cv, g)) {
    const int64_t PQ = g.P * g.Q;
    for_each_pixel_tile(cv, g, px, ks.mr, cv.panels,
                        [&](const void** rows, int inside, const int* tap_index, int64_t n0, int64_t count,
                            int64_t pixel, int64_t panel, int64_t tile, int64_t tiles) {
                          const int64_t k0 = panel * ks.nr, first = (n0 * PQ + pixel) * cv.K + k0;
                          TileArgs t;
                          t.rows = rows;
                          t.row_count = static_cast<int>(count);
                          t.taps = inside;
                          t.tap_index = tap_index;
                          t.channels = cv.C;
                          t.panel = cv.weights.data() + panel * cv.panel_size();
                          t.out = y.data() + first;
                          t.ld_out = PQ * cv.K;
                          t.col_count = static_cast<int>(std::min<int64_t>(ks.nr, cv.K - k0));
                          t.stage.bias = cv.bias.data() + k0;
                          t.stage.relu = relu;
                          t.stage.residual = residual ? residual->data() + first : nullptr;
                          t.stage.ld_residual = PQ * cv.K;
                          t.prefetch =
                              next_panel(cv.weights.data(), cv.panel_size() * static_cast<int64_t>(sizeof(float)),
                                         panel, cv.panels, tiles, 1)
                                  .slice(tile, inside * cv.C);
                          ks.tile_f32(t);
                        });
    return y;
  }
  for_each_tile_chunk(
      cv, g, px, ks.mr, cv.panels,
      [&](int64_t chunk_rows) {
        // The thread's own table of its chunk's kernel rows, the copies of those at the edges, and
        // one kernel row of zeros after them, for a layer read as kernel rows.
        const int64_t copy_floats = kernel_rows ? chunk_rows * taps * cv.C : 0;
        return [&, copy_floats, copies = std::vector<float>(kernel_rows ? copy_floats + row_channels : 0),
                kernel_row_table = std::vector<const void*>(kernel_rows ? chunk_rows * row_taps : 0)](
                   const void** rows, int64_t m0, int64_t count, int64_t panel, bool fresh) mutable {
          if (kernel_rows && fresh)
            fill_kernel_rows(cv, g, x.data(), copies.data() + copy_floats, m0, count, copies.data(),
                             kernel_row_table.data());
          const int64_t k0 = panel * ks.nr;
          TileArgs t;
          t.taps = static_cast<int>(row_taps);
          t.channels = row_channels;
          t.panel = cv.weights.data() + panel * cv.panel_size();
          t.ld_out = cv.K;
          t.col_count = static_cast<int>(std::min<int64_t>(ks.nr, cv.K - k0));
          t.stage.bias = cv.bias.data() + k0;
          t.stage.relu = relu;
          t.stage.ld_residual = cv.K;
          const NextPanel next = next_panel(cv.weights.data(), cv.panel_size() * static_cast<int64_t>(sizeof(float)),
                                            panel, cv.panels, count, ks.mr);
          for (int64_t i0 = 0; i0 < count; i0 += ks.mr) {
            const int64_t m = m0 + i0;
            t.prefetch = next.slice(i0 / ks.mr, taps * cv.C);
            prefetch_output_ahead(y.data(), residual ? residual->data() : nullptr, cv.K, m0, count, i0, ks.mr, k0,
                                  ks.nr);
            t.rows = (kernel_rows ? kernel_row_table.data() : rows) + i0 * row_taps;
            t.row_count = static_cast<int>(std::min<int64_t>(ks.mr, count - i0));
            t.out = y.data() + m * cv.K + k0;
            t.stage.residual = residual ? residual->data() + m * cv.K + k0 : nullptr;
            ks.tile_f32(t);
          }
        };
      },
      /*gather=*/!kernel_rows);
  return y;
}

namespace {

// Output rows [m0, m0 + count) of conv_nhwc(cv, x) without a residual, on the calling thread, into
// out[(m - m0) * K + k]. `table` and `copies` are the caller's scratch, kept between calls.
void conv_rows(const PackedConv& cv, const OutputGrid& g, const float* x, int64_t m0, int64_t count, bool relu,
               float* out, std::vector<const void*>& table, std::vector<float>& copies) {
  const KernelSet& ks = *cv.kernels;
  const bool kernel_rows = reads_kernel_rows(cv);
  const int64_t row_taps = kernel_rows ? cv.R : cv.taps(), row_channels = kernel_rows ? cv.S * cv.C : cv.C;
  table.resize(static_cast<size_t>(count * row_taps));
  if (kernel_rows) {
    const int64_t copy_floats = count * cv.taps() * cv.C;  // then one kernel row of zeros
    copies.resize(static_cast<size_t>(copy_floats + row_channels));
    std::fill(copies.begin() + copy_floats, copies.end(), 0.0f);
    fill_kernel_rows(cv, g, x, copies.data() + copy_floats, m0, count, copies.data(), table.data());
  } else {
    const PixelTable px{reinterpret_cast<const char*>(x), cv.C * static_cast<int64_t>(sizeof(float)), cv.zeros.data()};
    fill_rows(cv, g, px, m0, count, table.data());
  }
  TileArgs t;
  t.taps = static_cast<int>(row_taps);
  t.channels = row_channels;
  t.ld_out = cv.K;
  t.stage.relu = relu;
  for (int64_t i0 = 0; i0 < count; i0 += ks.mr) {
    t.rows = table.data() + i0 * row_taps;
    t.row_count = static_cast<int>(std::min<int64_t>(ks.mr, count - i0));
    for (int64_t panel = 0; panel < cv.panels; ++panel) {
      const int64_t k0 = panel * ks.nr;
      t.panel = cv.weights.data() + panel * cv.panel_size();
      t.col_count = static_cast<int>(std::min<int64_t>(ks.nr, cv.K - k0));
      t.stage.bias = cv.bias.data() + k0;
      t.out = out + i0 * cv.K + k0;
      ks.tile_f32(t);
    }
  }
}

// Pooled bands a thread computes at once: its convolution rows fill about this much of its cache.
constexpr int64_t kPoolBandBytes = 512 * 1024;

}  // namespace

Tensor conv_nhwc_maxpool(const PackedConv& cv, const Tensor& x, bool relu, MaxPool2dParams pool) {
  const OutputGrid g = output_grid(cv, x, "conv_nhwc_maxpool");
  // The pool over the convolution's P x Q map: maxpool_nhwc's geometry and checks.
  const PoolGeometry pg = pool_geometry("conv_nhwc_maxpool", Shape{g.N, g.P, g.Q, cv.K}, g.N, cv.K, g.P, g.Q, pool);
  const int64_t s = pool.stride, pad = pool.padding, k = pool.kernel, PP = pg.P, QQ = pg.Q;
  Tensor z = Tensor::empty({g.N, PP, QQ, cv.K});
  if (z.numel() == 0) return z;
  ProfileScope profile("conv nhwc + max pool");

  // Items of one image's band of pooled rows; bands as large as kPoolBandBytes of convolution rows
  // allows, and enough of them to share out evenly between the threads.
  const int threads = num_threads();
  const int64_t row_bytes = g.Q * cv.K * static_cast<int64_t>(sizeof(float));
  const int64_t most = std::max<int64_t>(1, (kPoolBandBytes / row_bytes - k + s) / s);
  const int64_t fewest = (PP + most - 1) / most;
  int64_t band = (PP + fewest - 1) / fewest;
  for (int64_t wanted = fewest; wanted <= PP; ++wanted) {  // more bands until the items share out evenly
    const int64_t b = (PP + wanted - 1) / wanted;
    if ((g.N * ((PP + b - 1) / b)) % threads == 0) {
      band = b;
      break;
    }
  }
  const int64_t bands = (PP + band - 1) / band;
  const int64_t items = g.N * bands, macs = g.rows() * cv.K * cv.C * cv.taps();
  const bool parallel = items > 1 && macs >= kParallelMinMacs && threads > 1;
#pragma omp parallel if (parallel)
  {
    Tensor rows = Tensor::empty({std::min(g.P, band * s + k) * g.Q * cv.K});
    std::vector<const void*> table;
    std::vector<float> copies;
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t n = item / bands, r0 = (item % bands) * band, r1 = std::min(PP, r0 + band);
      // The convolution rows the band's windows read: [a, b).
      const int64_t a = std::max<int64_t>(0, r0 * s - pad), b = std::min(g.P, (r1 - 1) * s - pad + k);
      conv_rows(cv, g, x.data(), (n * g.P + a) * g.Q, (b - a) * g.Q, relu, rows.data(), table, copies);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t q = 0; q < QQ; ++q)
          window_max_nhwc(rows.data(), a, pg, r, q, z.data() + ((n * PP + r) * QQ + q) * cv.K);
    }
  }
  return z;
}

Tensor conv_nhwc_ref(const Tensor& x, const Tensor& weight, const Tensor* bias, Conv2dParams params,
                     const Tensor* residual, bool relu) {
  params.relu = false;  // after the residual add, below
  Tensor y = nchw_to_nhwc(conv2d_forward_ref(nhwc_to_nchw(x), weight, bias, params));
  if (residual) expect_shape(*residual, y.shape(), "conv_nhwc_ref residual");
  for (int64_t i = 0; i < y.numel(); ++i) {
    float v = y.data()[i] + (residual ? residual->data()[i] : 0.0f);
    y.data()[i] = relu && v < 0.0f ? 0.0f : v;
  }
  return y;
}

}  // namespace toptag
