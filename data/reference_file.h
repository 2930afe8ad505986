// The Top Quark Tagging Reference Dataset's file layout, as pandas (PyTables "table" format) wrote
// train.h5 / val.h5 / test.h5:
//   /table/table: compound rows {index: int64, values_block_0: float[4n + 4], values_block_1: int64[2]}
//   values_block_0 = E_0, PX_0, PY_0, PZ_0, ..., PZ_{n-1}, truthE, truthPX, truthPY, truthPZ (n = 200)
//   values_block_1 = ttv, is_signal_new (1 = top)
//   column names pickled (protocol 0) in the attributes values_block_0_kind / values_block_1_kind;
//   the real files are compressed with blosc through an HDF5 filter plugin.
// Reading streams row ranges, so a file never has to fit in memory.
#pragma once

#include <string>
#include <vector>

#include "data/jets.h"
#include "io/h5.h"

namespace toptag {

// The column names stored in a pandas "_kind" attribute (a protocol-0 pickle of a list of str).
std::vector<std::string> parse_pandas_kind(const std::string& pickled);
std::string make_pandas_kind(const std::vector<std::string>& names);

// Rows dropped for holding NaN or inf.
struct NonFiniteReport {
  int64_t count = 0;
  int64_t first_row = -1;
};
// Prints the warning for jets skipped in `path` (nothing when none were).
void warn_skipped(const std::string& path, const NonFiniteReport& skipped);

class ReferenceFile {
 public:
  // Opens and validates the layout; throws naming the file and what is wrong.
  explicit ReferenceFile(const std::string& path);

  // True if the file has a /table/table dataset (without validating it).
  static bool looks_like(hid_t file);

  const std::string& path() const { return path_; }
  int64_t size() const { return rows_; }
  int n_constituents() const { return n_constituents_; }

  // Reads rows [start, start + count) into `out` (float32 whatever the stored precision). Jets with
  // NaN or inf anywhere are dropped and counted in `dropped`; labels other than 0/1 are an error.
  void read(int64_t start, int64_t count, JetBatch& out, NonFiniteReport& dropped) const;

 private:
  std::string path_;
  H5Id file_, dataset_, memory_type_;
  int64_t rows_ = 0;
  int n_constituents_ = 0;
  int block0_width_ = 0, block1_width_ = 0, label_column_ = 1, ttv_column_ = 0;
};

// Writes jets in the same layout (deflate-compressed, so h5py reads it without plugins), under a
// temporary name that is renamed into place by close().
class ReferenceWriter {
 public:
  explicit ReferenceWriter(const std::string& path, int n_constituents = kMaxConstituents);
  void append(const JetBatch& jets);
  void close();
  int64_t size() const { return rows_; }

 private:
  AtomicH5File file_;
  H5Id dataset_, type_;
  int n_constituents_;
  int64_t rows_ = 0;
};

}  // namespace toptag
