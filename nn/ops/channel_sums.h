// Per-channel sums over the rows of a channels-last (rows, C) matrix, for the ops that reduce over
// every pixel of a batch (batch norm, a convolution's bias gradient). Rows are cut into blocks that
// fit in cache; a block is summed in float along C (so the loop vectorises across channels), the
// blocks in double, in block order: the result does not depend on the thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace toptag {

// Floats of one block of rows: small enough that a second pass over the block hits the cache.
constexpr int64_t kChannelSumBlockFloats = 16384;
// Rows of one block at most: a float sum of n values is off by up to about n * 2^-24 of their size,
// so short blocks keep the statistics as close to float64 as NCHW's (float over one plane of 100 to
// 400 pixels at 40x40). Measured on ResNet-50's PyTorch golden (tests/test_parity.cpp), logits off by
// this much of the largest: 1.7e-4 with 2048-row blocks, 6.9e-5 with 256, 1.6e-5 with 128 (NCHW 3e-5).
constexpr int64_t kChannelSumMaxBlockRows = 128;

// Each block's own sums: partial[b * width + i] for block b, rows [b * block_rows, ...) of `rows`.
struct ChannelBlocks {
  int64_t rows = 0, block_rows = 0, blocks = 0, width = 0;
  std::vector<double> partial;
  int64_t rows_in(int64_t b) const { return std::min(rows, (b + 1) * block_rows) - b * block_rows; }
};

// add_rows(row_begin, row_end, acc) writes one block's terms into acc, `terms` arrays of C floats,
// zeroed before each block (it may make several passes over its rows: they are in cache).
template <class AddRows>
ChannelBlocks channel_block_sums(int64_t rows, int64_t C, int terms, const AddRows& add_rows) {
  ChannelBlocks out;
  out.rows = rows;
  out.width = terms * C;
  out.block_rows = std::clamp<int64_t>(kChannelSumBlockFloats / std::max<int64_t>(C, 1), 8, kChannelSumMaxBlockRows);
  out.blocks = (rows + out.block_rows - 1) / out.block_rows;
  out.partial.resize(static_cast<size_t>(out.blocks * out.width));
#pragma omp parallel
  {
    std::vector<float> acc(static_cast<size_t>(out.width));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < out.blocks; ++b) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      add_rows(b * out.block_rows, std::min(rows, (b + 1) * out.block_rows), acc.data());
      std::copy(acc.begin(), acc.end(), out.partial.begin() + b * out.width);
    }
  }
  return out;
}

// The `terms` x C sums over all rows: add_rows adds its rows' terms into acc.
template <class AddRows>
std::vector<double> channel_sums(int64_t rows, int64_t C, int terms, const AddRows& add_rows) {
  const ChannelBlocks blocks = channel_block_sums(rows, C, terms, add_rows);
  std::vector<double> total(static_cast<size_t>(blocks.width), 0.0);
#pragma omp parallel for schedule(static) if (blocks.blocks * blocks.width > 65536)
  for (int64_t i = 0; i < blocks.width; ++i) {
    double sum = 0.0;
    for (int64_t b = 0; b < blocks.blocks; ++b) sum += blocks.partial[static_cast<size_t>(b * blocks.width + i)];
    total[static_cast<size_t>(i)] = sum;
  }
  return total;
}

}  // namespace toptag
