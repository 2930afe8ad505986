// The Top Quark Tagging Reference Dataset's jets, as pandas wrote train.h5 / val.h5 / test.h5 (the
// "table" format under key "table"), or any DataFrame.to_hdf of them (data/pandas_frame.h: either
// format, any key, columns in any blocks and order, any float or integer dtype per column).
// Columns, found by name:
//   E_i, PX_i, PY_i, PZ_i for i < n: the n constituents (n = 200 in the reference files)
//   truthE, truthPX, truthPY, truthPZ: the top quark (optional: zeros when absent)
//   is_signal_new: the label (1 = top); ttv: the dataset's split tag (optional)
// The reference files themselves: /table/table, compound rows {index: int64, values_block_0:
// float[4n + 4], values_block_1: int64[2]} (ttv, is_signal_new), blosc-compressed through an HDF5
// filter plugin. Reading streams row ranges, so a file never has to fit in memory.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "data/jets.h"
#include "data/pandas_frame.h"
#include "io/h5.h"

namespace toptag {

// Rows dropped for holding NaN or inf.
struct NonFiniteReport {
  int64_t count = 0;
  int64_t first_row = -1;
};
// Prints the warning for jets skipped in `path` (nothing when none were).
void warn_skipped(const std::string& path, const NonFiniteReport& skipped);

class ReferenceFile {
 public:
  // Opens the DataFrame under `key` ("": the file's only one) and finds its columns; throws naming
  // the file, key and column that is wrong.
  explicit ReferenceFile(const std::string& path, const std::string& key = "");

  // True if the file holds a pandas object (without validating it).
  static bool looks_like(hid_t file);

  const std::string& path() const { return path_; }
  const std::string& key() const { return frame_.key(); }
  int64_t size() const { return rows_; }
  int n_constituents() const { return n_constituents_; }

  // Reads rows [start, start + count) into `out` (float32 whatever the stored precision). Jets with
  // NaN or inf anywhere are dropped and counted in `dropped`; labels other than 0/1 are an error.
  void read(int64_t start, int64_t count, JetBatch& out, NonFiniteReport& dropped) const;

 private:
  // Consecutive columns of one block that land side by side in a jet's floats (E_0 ... PZ_{n-1},
  // truthE ... truthPZ): the reference layout is one run of 4n + 4.
  struct Run {
    FrameColumn from;
    int to = 0, length = 0;
    bool is_float = true;
  };
  struct Scalar {
    FrameColumn at;
    bool is_float = true;
  };
  void map_columns();
  void add_column(const std::string& name, int to);
  Scalar scalar(const std::string& name, const FrameColumn& at) const;

  std::string path_;
  H5Id file_;
  PandasFrame frame_;
  int64_t rows_ = 0;
  int n_constituents_ = 0;
  bool has_truth_ = false;
  std::vector<Run> runs_;
  Scalar label_;
  std::optional<Scalar> ttv_;
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
