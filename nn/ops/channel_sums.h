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

// add_rows(row_begin, row_end, acc) adds rows [row_begin, row_end)'s terms into acc, `terms` arrays
// of C floats, zeroed before each block. Returns the `terms` x C sums over all rows.
template <class AddRows>
std::vector<double> channel_sums(int64_t rows, int64_t C, int terms, const AddRows& add_rows) {
  const int64_t width = terms * C;
  const int64_t block = std::max<int64_t>(8, kChannelSumBlockFloats / std::max<int64_t>(C, 1));
  const int64_t blocks = (rows + block - 1) / block;
  std::vector<double> partial(static_cast<size_t>(blocks * width));
#pragma omp parallel
  {
    std::vector<float> acc(static_cast<size_t>(width));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      add_rows(b * block, std::min(rows, (b + 1) * block), acc.data());
      std::copy(acc.begin(), acc.end(), partial.begin() + b * width);
    }
  }
  std::vector<double> total(static_cast<size_t>(width), 0.0);
#pragma omp parallel for schedule(static) if (blocks * width > 65536)
  for (int64_t i = 0; i < width; ++i) {
    double sum = 0.0;
    for (int64_t b = 0; b < blocks; ++b) sum += partial[static_cast<size_t>(b * width + i)];
    total[static_cast<size_t>(i)] = sum;
  }
  return total;
}

}  // namespace toptag
