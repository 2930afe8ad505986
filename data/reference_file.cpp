#include "data/reference_file.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>

#include "nn/check.h"

namespace toptag {

namespace {

constexpr int64_t kWriteChunkRows = 256;
constexpr const char* kComponents[] = {"E_", "PX_", "PY_", "PZ_"};
constexpr const char* kTruth[] = {"truthE", "truthPX", "truthPY", "truthPZ"};

H5Id array_type(hid_t base, int width) {
  const hsize_t dim = static_cast<hsize_t>(width);
  return H5Id(H5Tarray_create2(base, 1, &dim));
}

std::vector<std::string> block0_names(int n) {
  std::vector<std::string> names;
  for (int i = 0; i < n; ++i)
    for (const char* c : kComponents) names.push_back(c + std::to_string(i));
  for (const char* t : kTruth) names.push_back(t);
  return names;
}

// 1 + the largest i of the columns E_i, PX_i, PY_i, PZ_i (so a missing column in between is caught).
int constituent_count(const std::vector<std::string>& columns) {
  int n = 0;
  for (const std::string& c : columns)
    for (const char* prefix : kComponents) {
      const size_t p = std::strlen(prefix);
      if (c.size() <= p || c.compare(0, p, prefix) != 0) continue;
      int i = -1;
      const auto [end, error] = std::from_chars(c.data() + p, c.data() + c.size(), i);
      // An index past the column count cannot have all its columns (E_2147483647 would overflow i + 1):
      // one past the count keeps the later check of every column bounded, and it names the first missing.
      const int count = static_cast<int>(columns.size());
      if (error == std::errc() && end == c.data() + c.size() && std::to_string(i) == c.substr(p))
        n = std::max(n, i < count ? i + 1 : count + 1);
    }
  return n;
}

// A value of a float32 or int64 column of the rows read.
double number_at(const FrameRows& rows, int64_t r, const FrameColumn& c, bool is_float) {
  const unsigned char* p = rows.at(c.block, r);
  if (is_float) {
    float f;
    std::memcpy(&f, p + c.index * sizeof(float), sizeof(f));
    return f;
  }
  int64_t i;
  std::memcpy(&i, p + c.index * sizeof(int64_t), sizeof(i));
  return static_cast<double>(i);
}

}  // namespace

namespace {

// The attributes PyTables and pandas write beside a table (pandas 0.15's HDFStore format, as in the
// reference files), so that pandas.read_hdf(path, "table") reads toptag's files too. Pickled
// attributes are protocol-0 pickles, as pandas leaves them.
void write_pandas_metadata(hid_t root, hid_t group, hid_t table, const std::vector<std::string>& block0, int64_t rows) {
  for (hid_t g : {root, group}) {
    h5_set_attr_bytes(g, "CLASS", "GROUP");
    h5_set_attr_bytes(g, "TITLE", "");
    h5_set_attr_bytes(g, "VERSION", "1.0");
  }
  h5_set_attr_bytes(root, "PYTABLES_FORMAT_VERSION", "2.1");
  std::vector<std::string> columns = block0;
  columns.insert(columns.end(), {"ttv", "is_signal_new"});
  std::string axes = "(lp0\n(I1\n(lp1\n";  // [(1, [column names])]
  for (size_t i = 0; i < columns.size(); ++i) axes += fmt::format("{}V{}\np{}\n", i == 0 ? "" : "a", columns[i], i + 2);
  axes += fmt::format("atp{}\na.", columns.size() + 2);
  const std::pair<const char*, const char*> group_text[] = {
      {"pandas_type", "frame_table"},
      {"pandas_version", "0.15.2"},
      {"table_type", "appendable_frame"},
      {"encoding", "UTF-8"},
      {"errors", "strict"},
      {"nan_rep", "nan"},
      {"data_columns", "(lp0\n."},
      {"index_cols", "(lp0\n(I0\nVindex\np1\ntp2\na."},
      {"values_cols", "(lp0\nVvalues_block_0\np1\naVvalues_block_1\np2\na."},
      {"info",
       "(dp0\nI1\n(dp1\nVnames\np2\n(lp3\nNasVtype\np4\nVIndex\np5\nssVindex\np6\n(dp7\nsVvalues_block_0\np8\n"
       "(dp9\nsVvalues_block_1\np10\n(dp11\ns."}};
  for (const auto& [name, value] : group_text) h5_set_attr_bytes(group, name, value);
  h5_set_attr_bytes(group, "non_index_axes", axes);
  h5_set_attr(group, "levels", int64_t{1});
  const std::pair<const char*, const char*> table_text[] = {{"CLASS", "TABLE"},
                                                            {"VERSION", "2.7"},
                                                            {"TITLE", ""},
                                                            {"FIELD_0_NAME", "index"},
                                                            {"FIELD_1_NAME", "values_block_0"},
                                                            {"FIELD_2_NAME", "values_block_1"},
                                                            {"index_kind", "integer"},
                                                            {"values_block_0_dtype", "float32"},
                                                            {"values_block_0_meta", "N."},
                                                            {"values_block_1_dtype", "int64"},
                                                            {"values_block_1_meta", "N."}};
  for (const auto& [name, value] : table_text) h5_set_attr_bytes(table, name, value);
  h5_set_attr(table, "NROWS", rows);
  h5_set_attr(table, "FIELD_0_FILL", int64_t{0});
  h5_set_attr(table, "FIELD_1_FILL", 0.0);
  h5_set_attr(table, "FIELD_2_FILL", int64_t{0});
}

}  // namespace

void warn_skipped(const std::string& path, const NonFiniteReport& skipped) {
  if (skipped.count > 0)
    fmt::print(stderr, "toptag: warning: {}: skipped {} jets holding NaN or inf (first at row {})\n", path,
               skipped.count, skipped.first_row);
}

bool ReferenceFile::looks_like(hid_t file) {
  return !pandas_keys(file).empty();
}

ReferenceFile::ReferenceFile(const std::string& path, const std::string& key)
    : path_(path), file_(h5_open(path)), frame_(path, file_.get(), key), rows_(frame_.rows()) {
  map_columns();
}

void ReferenceFile::map_columns() {
  const std::vector<std::string> columns = frame_.columns();
  n_constituents_ = constituent_count(columns);
  if (n_constituents_ == 0)
    fail("{}: key '{}' has no constituent columns E_0, PX_0, PY_0, PZ_0, ... (columns: {}{})", path_, key(),
         fmt::join(columns.begin(), columns.begin() + std::min<size_t>(columns.size(), 8), ", "),
         columns.size() > 8 ? ", ..." : "");
  for (int i = 0; i < n_constituents_; ++i)
    for (int k = 0; k < 4; ++k) add_column(kComponents[k] + std::to_string(i), i * 4 + k);
  int truth_found = 0;
  for (const char* t : kTruth) truth_found += frame_.find(t).has_value();
  has_truth_ = truth_found == 4;
  if (truth_found != 0 && !has_truth_)
    for (const char* t : kTruth)
      if (!frame_.find(t)) fail("{}: key '{}' has some truth columns but no column '{}'", path_, key(), t);
  if (has_truth_)
    for (int k = 0; k < 4; ++k) add_column(kTruth[k], n_constituents_ * 4 + k);

  const std::optional<FrameColumn> label = frame_.find("is_signal_new");
  if (!label) fail("{}: key '{}' has no label column 'is_signal_new'", path_, key());
  label_ = scalar("is_signal_new", *label);
  if (const std::optional<FrameColumn> ttv = frame_.find("ttv")) ttv_ = scalar("ttv", *ttv);

  std::vector<int> blocks;
  auto use = [&](int b) {
    if (std::find(blocks.begin(), blocks.end(), b) == blocks.end()) blocks.push_back(b);
  };
  for (const Run& r : runs_) use(r.from.block);
  use(label_.at.block);
  if (ttv_) use(ttv_->at.block);
  frame_.select(blocks);
}

// Appends the column `name` as float `to` of each jet, extending the last run where it continues it.
void ReferenceFile::add_column(const std::string& name, int to) {
  const std::optional<FrameColumn> at = frame_.find(name);
  if (!at)
    fail("{}: key '{}' has no column '{}' (its {} constituents need E_i, PX_i, PY_i, PZ_i each)", path_, key(), name,
         n_constituents_);
  const bool is_float = frame_.is_float(name, *at);
  if (!runs_.empty()) {
    Run& last = runs_.back();
    if (last.from.block == at->block && last.from.index + last.length == at->index && last.to + last.length == to &&
        last.is_float == is_float) {
      ++last.length;
      return;
    }
  }
  runs_.push_back(Run{*at, to, 1, is_float});
}

ReferenceFile::Scalar ReferenceFile::scalar(const std::string& name, const FrameColumn& at) const {
  return Scalar{at, frame_.is_float(name, at)};
}

void ReferenceFile::read(int64_t start, int64_t count, JetBatch& out, NonFiniteReport& dropped) const {
  if (start < 0 || count < 0 || start + count > rows_)
    fail("{}: rows [{}, {}) are outside the file's {} rows", path_, start, start + count, rows_);
  FrameRows rows;
  frame_.read(start, count, rows);
  const int n = n_constituents_;
  const int width = n * 4 + 4;
  std::vector<float> jet(static_cast<size_t>(width), 0.0f);  // constituents, then truth (zeros if absent)
  out.resize(0, n);
  out.constituents.reserve(static_cast<size_t>(count) * n * 4);
  for (int64_t r = 0; r < count; ++r) {
    const double label = number_at(rows, r, label_.at, label_.is_float);
    if (label != 0 && label != 1)
      fail("{}: row {} has label is_signal_new = {}; labels must be 0 (QCD) or 1 (top)", path_, start + r, label);
    for (const Run& run : runs_) {
      const unsigned char* from = rows.at(run.from.block, r);
      if (run.is_float) {
        std::memcpy(jet.data() + run.to, from + run.from.index * sizeof(float), run.length * sizeof(float));
      } else {
        for (int i = 0; i < run.length; ++i) {
          int64_t v;
          std::memcpy(&v, from + (run.from.index + i) * sizeof(int64_t), sizeof(v));
          jet[static_cast<size_t>(run.to + i)] = static_cast<float>(v);
        }
      }
    }
    bool finite = true;
    for (int i = 0; i < width && finite; ++i) finite = std::isfinite(jet[static_cast<size_t>(i)]);
    if (!finite) {
      if (dropped.count++ == 0) dropped.first_row = start + r;
      continue;
    }
    out.constituents.insert(out.constituents.end(), jet.begin(), jet.begin() + n * 4);
    out.truth.insert(out.truth.end(), jet.begin() + n * 4, jet.end());
    out.labels.push_back(static_cast<int64_t>(label));
    const double ttv = ttv_ ? number_at(rows, r, ttv_->at, ttv_->is_float) : 0.0;
    out.ttv.push_back(std::abs(ttv) < 1e18 ? static_cast<int64_t>(ttv) : 0);  // NaN: 0
    out.rows.push_back(start + r);
  }
}

ReferenceWriter::ReferenceWriter(const std::string& path, int n_constituents)
    : file_(path), n_constituents_(n_constituents) {
  const int width0 = 4 * n_constituents + 4;
  type_ = H5Id(H5Tcreate(H5T_COMPOUND, 8 + static_cast<size_t>(width0) * 4 + 16));
  H5Id f = array_type(H5T_IEEE_F32LE, width0), i = array_type(H5T_STD_I64LE, 2);
  H5Tinsert(type_.get(), "index", 0, H5T_STD_I64LE);
  H5Tinsert(type_.get(), "values_block_0", 8, f.get());
  H5Tinsert(type_.get(), "values_block_1", 8 + static_cast<size_t>(width0) * 4, i.get());

  H5Id group = h5_group(file_.id(), "table", true);
  dataset_ = h5_create_rows(group.get(), "table", type_.get(), {}, kWriteChunkRows, true, path);
  h5_set_attr_bytes(dataset_.get(), "values_block_0_kind", make_pandas_kind(block0_names(n_constituents)));
  h5_set_attr_bytes(dataset_.get(), "values_block_1_kind", make_pandas_kind({"ttv", "is_signal_new"}));
}

void ReferenceWriter::append(const JetBatch& jets) {
  if (jets.n_constituents != n_constituents_)
    fail("{}: jets with {} constituents appended to a file of {}", file_.path(), jets.n_constituents, n_constituents_);
  const int64_t count = jets.size();
  if (count == 0) return;
  const int width0 = 4 * n_constituents_ + 4;
  const size_t row_bytes = H5Tget_size(type_.get());
  std::vector<unsigned char> buffer(static_cast<size_t>(count) * row_bytes);
  for (int64_t j = 0; j < count; ++j) {
    unsigned char* row = buffer.data() + j * row_bytes;
    const int64_t index = rows_ + j, block1[2] = {jets.ttv[j], jets.labels[j]};
    std::memcpy(row, &index, 8);
    std::memcpy(row + 8, jets.constituents.data() + j * n_constituents_ * 4, n_constituents_ * 16);
    std::memcpy(row + 8 + n_constituents_ * 16, jets.truth.data() + j * 4, 16);
    std::memcpy(row + 8 + width0 * 4, block1, 16);
  }
  h5_append_rows(dataset_.get(), type_.get(), count, buffer.data(), file_.path() + ": /table/table");
  rows_ += count;
}

void ReferenceWriter::close() {
  {
    H5Id group = h5_group(file_.id(), "table", false);
    write_pandas_metadata(file_.id(), group.get(), dataset_.get(), block0_names(n_constituents_), rows_);
  }
  // Closing the dataset writes what HDF5 still buffers: a full disk can show here.
  if (!dataset_.close()) fail("{}: cannot write /table/table ({})", file_.path(), h5_write_failure());
  type_.reset();
  file_.commit();
}

}  // namespace toptag
