// A DataFrame as pandas' DataFrame.to_hdf writes it (pandas io/pytables.py), in either format:
//   table (format="table"): /KEY/table, compound rows {index, values_block_0: T0[w0], values_block_1:
//     T1[w1], ..., one scalar member per data column}; the names of values_block_N's columns pickled in
//     the table's attribute values_block_N_kind (a data column's in NAME_kind).
//   fixed (the default): /KEY/blockN_items (block N's column names, bytes) and /KEY/blockN_values
//     (rows x columns, the block's dtype).
// pandas groups columns into blocks by dtype and order, so a reader finds a column by its name.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <vector>

#include "io/h5.h"

namespace toptag {

// The column names stored in a pandas "_kind" attribute (a protocol-0 pickle of a list of str).
std::vector<std::string> parse_pandas_kind(const std::string& pickled);
std::string make_pandas_kind(const std::vector<std::string>& names);

// The keys of the pandas objects in a file, as pandas spells them ("/table", "/jets"): groups with a
// pandas_type attribute. A file without any but with /table/table (an unlabelled reference layout)
// has the key "/table".
std::vector<std::string> pandas_keys(hid_t file);

// Where a column is stored: block, and column within the block.
struct FrameColumn {
  int block = 0;
  int index = 0;
};

// Rows of the selected blocks: floating blocks as float32, integer blocks as int64, whatever their
// stored width. at(block, row) is the row's first column of that block; unaligned: read with memcpy.
class FrameRows {
 public:
  const unsigned char* at(int block, int64_t row) const { return base_[block] + row * stride_[block]; }

 private:
  friend class PandasFrame;
  std::vector<std::vector<unsigned char>> buffers_;
  std::vector<const unsigned char*> base_;
  std::vector<size_t> stride_;
};

class PandasFrame {
 public:
  // Opens the DataFrame under `key` ("" or absent: the file's only pandas object). Errors name the
  // file and the keys.
  PandasFrame(const std::string& path, hid_t file, const std::string& key);

  const std::string& key() const { return key_; }
  bool is_table() const { return table_.valid(); }
  int64_t rows() const { return rows_; }
  // Every column name, block by block.
  std::vector<std::string> columns() const;
  // Where the column `name` is; nullopt when there is none.
  std::optional<FrameColumn> find(const std::string& name) const;
  // Floating (read as float32) or integer (read as int64); an error naming the column otherwise.
  bool is_float(const std::string& column, const FrameColumn& where) const;

  // Chooses the blocks that read() reads (blocks not named are skipped).
  void select(std::span<const int> blocks);
  // Rows [start, start + count) of the selected blocks.
  void read(int64_t start, int64_t count, FrameRows& out) const;

 private:
  struct Block {
    std::string what;  // for errors: "values_block_0 in /jets/table", "/jets/block1_values"
    std::vector<std::string> names;
    H5T_class_t stored_class = H5T_NO_CLASS;
    int width = 0;
    std::string member;   // table: the compound member
    bool scalar = false;  // table: a data column (a scalar member, not an array)
    H5Id dataset;         // fixed: blockN_values
    bool numeric() const { return stored_class == H5T_FLOAT || stored_class == H5T_INTEGER; }
    size_t element_bytes() const { return stored_class == H5T_FLOAT ? 4 : 8; }
  };
  void open_table(hid_t group);
  void open_fixed(hid_t group);

  std::string path_, key_;
  int64_t rows_ = 0;
  H5Id table_;  // table format: /KEY/table
  std::vector<Block> blocks_;
  std::vector<int> selected_;
  H5Id memory_type_;                   // table format: the selected members
  std::vector<size_t> member_offset_;  // table format: each block's offset in memory_type_
};

}  // namespace toptag
