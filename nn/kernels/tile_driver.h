// How a convolution over NHWC activations is cut into tiles (nn/kernels/tile.h), whatever its number
// format: conv_nhwc (float32) and conv_nhwc_bfp (block floating point) share it. Internal to
// nn/kernels.
//
// The output rows (pixels) are cut into chunks of about kChunkRows, and the work into items of one
// chunk by one panel of output channels. Threads take contiguous runs of items, so at batch 1, where
// a layer has a handful of pixels, the cores split the output channels between them; a convolution
// too small to be worth a second thread runs on one.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "nn/kernels/packed_conv.h"
#include "nn/kernels/tile.h"
#include "nn/parallel.h"

namespace toptag {

// The output map of a convolution over an (N, H, W, C) input.
struct OutputGrid {
  int64_t N, H, W, P, Q;
  int64_t rows() const { return N * P * Q; }
};

// Checks x against the convolution ("op: input must be (N, H, W, C) ...") and returns its output map.
OutputGrid output_grid(const ConvShape& cv, const Tensor& x, const char* op);

// Where the kernel reads pixels: pixel p = (n * H + h) * W + w at base + p * stride bytes, and the
// padding at `zeros`.
struct PixelTable {
  const char* base;
  int64_t stride;
  const void* zeros;
};

// rows[i * taps + t]: the pixel tap t of output row m0 + i reads, or the zeros.
void fill_rows(const ConvShape& cv, const OutputGrid& g, const PixelTable& px, int64_t m0, int64_t count,
               const void** rows);

// Rows per chunk: a chunk's indirection table and input rows stay in cache while every panel of the
// layer passes over them.
constexpr int64_t kChunkRows = 192;

// The output rows of the tile kPrefetchTiles tiles of `mr` rows after the one at row i0 of a chunk
// of `count` rows starting at output row m0 (none past the chunk), columns [k0, k0 + columns) of an
// (., ld) output, and of the residual when there is one, asked for ahead of the tile that writes
// them: a layer with few input channels and many outputs (ResNet's 1x1 expansions, with their
// residual) is bound by streaming those rows through memory.
constexpr int64_t kPrefetchTiles = 2;
inline void prefetch_output_ahead(float* out, const float* residual, int64_t ld, int64_t m0, int64_t count, int64_t i0,
                                  int64_t mr, int64_t k0, int64_t columns) {
  constexpr int64_t kFloatsPerLine = 16;  // a 64-byte cache line
  const int64_t first = i0 + kPrefetchTiles * mr, last = std::min(count, first + mr);
  for (int64_t i = m0 + first; i < m0 + last; ++i)
    for (int64_t j = 0; j < columns; j += kFloatsPerLine) {
      __builtin_prefetch(out + i * ld + k0 + j, 1);
      if (residual) __builtin_prefetch(residual + i * ld + k0 + j, 0);
    }
}

// The panel after `panel` of a layer's packed weights (panel_bytes each), cut into one slice per tile
// of the `count` rows the current panel computes, for the tiles' PanelPrefetch: the next panel arrives
// while this one's tiles compute. The last panel has none.
struct NextPanel {
  const char* begin = nullptr;
  int64_t lines = 0, tiles = 1;

  // Tile `tile`'s share (none past the last), spread over its `steps` reduction steps.
  PanelPrefetch slice(int64_t tile, int64_t steps) const {
    const int64_t per_tile = (lines + tiles - 1) / tiles, first = std::min(lines, tile * per_tile);
    // A panel is at most 2 lines per step (32 floats, or 32 columns of 4 bytes; int8's word panels,
    // 4 lines per group of 4 channels at 32 columns, are 2 per pair of channels, the word tile's
    // step), so in the chunked order a tile asks for all its share. Pixel by pixel a tile may have only a few of the
    // panel's taps, and asks for part of its share: the prefetch is a hint, and the capped rate keeps it cheap.
    return {begin + first * 64, begin ? std::min(per_tile, lines - first) : 0, per_tile > steps ? 2 : 1};
  }
};
inline NextPanel next_panel(const void* weights, int64_t panel_bytes, int64_t panel, int64_t panels, int64_t count,
                            int64_t mr) {
  if (panel + 1 >= panels) return {};
  return {static_cast<const char*>(weights) + (panel + 1) * panel_bytes, panel_bytes / 64, (count + mr - 1) / mr};
}

// Runs every (chunk, panel) item. make_worker() is called once per thread and returns the callable
// work(rows, m0, count, panel, fresh) that computes output rows [m0, m0 + count) of one panel, where
// rows is the chunk's indirection table (count * taps pointers; null when `gather` is false: the
// worker reads the input its own way) and fresh says the chunk is new to this thread.
template <class MakeWorker>
void for_each_tile_chunk(const ConvShape& cv, const OutputGrid& g, const PixelTable& px, int mr, int64_t panels,
                         MakeWorker make_worker, bool gather = true) {
  const int64_t M = g.rows(), taps = cv.taps();
  // Chunks of about kChunkRows rows, all the same size (a multiple of the tile's rows), so that the
  // threads' shares are even: 196 rows are two chunks of 108 and 88, not 192 and 4.
  const int64_t wanted_chunks = (M + kChunkRows - 1) / kChunkRows;
  const int64_t chunk_rows = ((M + wanted_chunks - 1) / wanted_chunks + mr - 1) / mr * mr;
  const int64_t chunks = (M + chunk_rows - 1) / chunk_rows, items = chunks * panels;
  const int64_t macs = M * cv.K * cv.C * taps;
  const bool parallel = items > 1 && macs >= kParallelMinMacs && num_threads() > 1;
#pragma omp parallel if (parallel)
  {
    auto work = make_worker(chunk_rows);
    std::vector<const void*> rows(gather ? static_cast<size_t>(chunk_rows * taps) : 0);
    int64_t filled = -1;  // the chunk this thread last ran (whose rows are in `rows`)
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t chunk = item / panels, panel = item % panels;
      const int64_t m0 = chunk * chunk_rows, count = std::min(chunk_rows, M - m0);
      const bool fresh = filled != chunk;
      if (fresh && gather) fill_rows(cv, g, px, m0, count, rows.data());
      filled = chunk;
      work(gather ? rows.data() : nullptr, m0, count, panel, fresh);
    }
  }
}

// --- Pixel by pixel: small maps with padding ---------------------------------------------------------
// On a small map, many of a convolution's taps read the padding: a 3x3 one's 40% on 3x3 maps, 56% on
// 2x2 maps. With the rows in their usual order (image, then pixel), a tile mixes pixels, and computes
// every tap, on zeros for some of its rows. Pixel by pixel (one output pixel of every image of the
// batch, then the next pixel), all the rows of a tile read the same taps, and the tile passes the
// kernel only those inside the map (TileArgs::tap_index). That takes a batch of several images, since
// a tile holds one pixel's rows, and strides the output: row n of pixel (p, q) is output row
// (n * P + p) * Q + q.
constexpr int64_t kPixelMajorMinBatch = 8;
// The share of (pixel, tap) pairs inside the map at or below which it pays.
constexpr double kPixelMajorMaxInside = 0.8;

// The share of an output map's (pixel, tap) pairs that read inside the input (1: none read padding).
inline double taps_inside(const ConvShape& cv, const OutputGrid& g) {
  auto inside = [&](int64_t out, int64_t in, int64_t kernel) {
    int64_t n = 0;
    for (int64_t o = 0; o < out; ++o)
      for (int64_t k = 0; k < kernel; ++k) {
        const int64_t at = o * cv.stride - cv.pad + k;
        n += at >= 0 && at < in;
      }
    return n;
  };
  return static_cast<double>(inside(g.P, g.H, cv.R) * inside(g.Q, g.W, cv.S)) /
         static_cast<double>(g.P * g.Q * cv.taps());
}

inline bool pixel_major(const ConvShape& cv, const OutputGrid& g) {
  return g.N >= kPixelMajorMinBatch && cv.taps() > 1 && taps_inside(cv, g) <= kPixelMajorMaxInside;
}

// Runs a convolution pixel_major() chose as items of one panel by one output pixel, panel by panel so
// that a panel stays in cache over the pixels, each item as tiles of at most `mr` images (sizes
// differing by at most one). work(rows, taps, tap_index, n0, count, pixel, panel, tile, tiles) computes
// images [n0, n0 + count) at output pixel `pixel` (p * Q + q) of one panel: rows holds count * taps
// pointers, the taps inside the map only, which are the panel's taps tap_index[0, taps); tile numbers
// this panel's tiles, 0 to tiles - 1, in the order they run.
template <class Work>
void for_each_pixel_tile(const ConvShape& cv, const OutputGrid& g, const PixelTable& px, int mr, int64_t panels,
                         Work work) {
  const int64_t pixels = g.P * g.Q, items = panels * pixels, taps = cv.taps(), tiles = (g.N + mr - 1) / mr;
  const auto macs = static_cast<int64_t>(taps_inside(cv, g) * static_cast<double>(g.rows() * cv.K * cv.C * taps));
  const bool parallel = items > 1 && macs >= kParallelMinMacs && num_threads() > 1;
#pragma omp parallel if (parallel)
  {
    std::vector<const void*> rows(static_cast<size_t>(mr * taps));
    std::vector<int> index(static_cast<size_t>(taps));
    std::vector<int64_t> offset(static_cast<size_t>(taps));  // the input pixel (h * W + w) each tap reads
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t panel = item / pixels, pixel = item % pixels, p = pixel / g.Q, q = pixel % g.Q;
      int inside = 0;
      for (int64_t r = 0; r < cv.R; ++r)
        for (int64_t s = 0; s < cv.S; ++s) {
          const int64_t h = p * cv.stride - cv.pad + r, w = q * cv.stride - cv.pad + s;
          if (h < 0 || h >= g.H || w < 0 || w >= g.W) continue;
          index[static_cast<size_t>(inside)] = static_cast<int>(r * cv.S + s);
          offset[static_cast<size_t>(inside)] = h * g.W + w;
          ++inside;
        }
      for (int64_t tile = 0; tile < tiles; ++tile) {
        const int64_t n0 = tile * g.N / tiles, count = (tile + 1) * g.N / tiles - n0;
        for (int64_t i = 0; i < count; ++i)
          for (int j = 0; j < inside; ++j)
            rows[static_cast<size_t>(i * inside + j)] =
                px.base + ((n0 + i) * g.H * g.W + offset[static_cast<size_t>(j)]) * px.stride;
        work(rows.data(), inside, index.data(), n0, count, pixel, panel, pixel * tiles + tile, pixels * tiles);
      }
    }
  }
}

}  // namespace toptag
