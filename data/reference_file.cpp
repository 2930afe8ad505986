#include "data/reference_file.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>

#include "nn/check.h"

namespace toptag {

// values_block_1 holds the integer columns (ttv, is_signal_new): a few, never more than this.
constexpr int kMaxIntegerColumns = 8;

namespace {

constexpr H5Z_filter_t kBloscFilter = 32001;
constexpr int64_t kWriteChunkRows = 256;

// The compound member `name` of `type` must be an array of `cls` with one dimension; returns its length.
int array_member_width(hid_t type, const char* name, H5T_class_t cls, const std::string& path) {
  const int index = H5Tget_member_index(type, name);
  if (index < 0) fail("{}: /table/table has no column block '{}': not the reference dataset layout", path, name);
  H5Id member(H5Tget_member_type(type, static_cast<unsigned>(index)));
  if (H5Tget_class(member.get()) != H5T_ARRAY) fail("{}: '{}' in /table/table is not an array column", path, name);
  H5Id base(H5Tget_super(member.get()));
  if (H5Tget_class(base.get()) != cls)
    fail("{}: '{}' in /table/table holds {} values, expected {}", path, name,
         H5Tget_class(base.get()) == H5T_FLOAT ? "floating" : "non-floating",
         cls == H5T_FLOAT ? "floating" : "integer");
  if (H5Tget_array_ndims(member.get()) != 1) fail("{}: '{}' in /table/table is not one-dimensional", path, name);
  hsize_t dim = 0;
  H5Tget_array_dims2(member.get(), &dim);
  return static_cast<int>(dim);
}

void check_filters(hid_t dataset, const std::string& path) {
  H5Id plist(H5Dget_create_plist(dataset));
  const int n = H5Pget_nfilters(plist.get());
  for (int i = 0; i < n; ++i) {
    unsigned flags = 0, config = 0;
    size_t n_values = 0;
    char name[64] = {};
    const H5Z_filter_t id =
        H5Pget_filter2(plist.get(), static_cast<unsigned>(i), &flags, &n_values, nullptr, sizeof(name), name, &config);
    if (H5Zfilter_avail(id) > 0) continue;
    if (id == kBloscFilter)
      fail(
          "{}: compressed with blosc, but the HDF5 blosc filter plugin is not available; install the Debian "
          "package hdf5-filter-plugin-blosc-serial (or point HDF5_PLUGIN_PATH at a blosc plugin)",
          path);
    fail("{}: needs HDF5 compression filter {} ('{}'), which is not available", path, id, name);
  }
}

H5Id array_type(hid_t base, int width) {
  const hsize_t dim = static_cast<hsize_t>(width);
  return H5Id(H5Tarray_create2(base, 1, &dim));
}

// The in-memory row: the two value blocks only, converted by member name to float32 / int64.
H5Id memory_row_type(int width0, int width1) {
  H5Id type(H5Tcreate(H5T_COMPOUND, static_cast<size_t>(width0) * 4 + static_cast<size_t>(width1) * 8));
  H5Id f = array_type(H5T_NATIVE_FLOAT, width0), i = array_type(H5T_NATIVE_INT64, width1);
  H5Tinsert(type.get(), "values_block_0", 0, f.get());
  H5Tinsert(type.get(), "values_block_1", static_cast<size_t>(width0) * 4, i.get());
  return type;
}

int find_name(const std::vector<std::string>& names, const std::string& name) {
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == name) return static_cast<int>(i);
  return -1;
}

std::vector<std::string> block0_names(int n) {
  std::vector<std::string> names;
  for (int i = 0; i < n; ++i)
    for (const char* c : {"E_", "PX_", "PY_", "PZ_"}) names.push_back(c + std::to_string(i));
  for (const char* t : {"truthE", "truthPX", "truthPY", "truthPZ"}) names.push_back(t);
  return names;
}

}  // namespace

std::vector<std::string> parse_pandas_kind(const std::string& pickled) {
  // Protocol 0 list of unicode strings: "(lp0\nVname\np1\naVname2\np2\na." -> lines starting "V" or "aV".
  std::vector<std::string> names;
  size_t pos = 0;
  while (pos < pickled.size()) {
    size_t end = pickled.find('\n', pos);
    if (end == std::string::npos) end = pickled.size();
    std::string line = pickled.substr(pos, end - pos);
    if (line.rfind("aV", 0) == 0) line = line.substr(1);
    if (line.rfind("V", 0) == 0) names.push_back(line.substr(1));
    pos = end + 1;
  }
  return names;
}

std::string make_pandas_kind(const std::vector<std::string>& names) {
  std::string s = "(lp0\n";
  for (size_t i = 0; i < names.size(); ++i) s += fmt::format("{}V{}\np{}\n", i == 0 ? "" : "a", names[i], i + 1);
  return s + "a.";
}

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
  return h5_exists(file, "/table/table");
}

ReferenceFile::ReferenceFile(const std::string& path) : path_(path), file_(h5_open(path)) {
  if (!looks_like(file_.get()))
    fail(
        "{}: not a pandas table file (no dataset /table/table); expected the Top Quark Tagging Reference "
        "Dataset layout",
        path);
  dataset_ = h5_open_dataset(file_.get(), "/table/table", path);
  H5Id type(H5Dget_type(dataset_.get()));
  if (H5Tget_class(type.get()) != H5T_COMPOUND) fail("{}: /table/table does not hold compound rows", path);
  block0_width_ = array_member_width(type.get(), "values_block_0", H5T_FLOAT, path);
  block1_width_ = array_member_width(type.get(), "values_block_1", H5T_INTEGER, path);
  if (block0_width_ < 8 || (block0_width_ - 4) % 4 != 0)
    fail(
        "{}: values_block_0 has {} columns; expected 4 per constituent plus 4 truth columns (804 for 200 "
        "constituents)",
        path, block0_width_);
  n_constituents_ = (block0_width_ - 4) / 4;
  if (block1_width_ < 1 || block1_width_ > kMaxIntegerColumns)
    fail("{}: values_block_1 has {} integer columns; expected 1 to {} (ttv, is_signal_new)", path, block1_width_,
         kMaxIntegerColumns);

  if (auto kind = h5_attr_string(dataset_.get(), "values_block_0_kind")) {
    const std::vector<std::string> names = parse_pandas_kind(*kind);
    if (names != block0_names(n_constituents_))
      fail("{}: values_block_0 columns are not E_0, PX_0, PY_0, PZ_0, ..., truthPZ (found {} names starting '{}')",
           path, names.size(), names.empty() ? "" : names.front());
  }
  if (auto kind = h5_attr_string(dataset_.get(), "values_block_1_kind")) {
    const std::vector<std::string> names = parse_pandas_kind(*kind);
    label_column_ = find_name(names, "is_signal_new");
    ttv_column_ = find_name(names, "ttv");
    if (label_column_ < 0 || label_column_ >= block1_width_)
      fail("{}: values_block_1 has no 'is_signal_new' label column (columns: {})", path, fmt::join(names, ", "));
  } else if (block1_width_ != 2) {
    fail("{}: values_block_1 has {} columns and no names; expected ttv, is_signal_new", path, block1_width_);
  }
  check_filters(dataset_.get(), path);
  const std::vector<int64_t> shape = h5_shape(dataset_.get());
  if (shape.size() != 1) fail("{}: /table/table is not one-dimensional", path);
  rows_ = shape[0];
  memory_type_ = memory_row_type(block0_width_, block1_width_);
}

void ReferenceFile::read(int64_t start, int64_t count, JetBatch& out, NonFiniteReport& dropped) const {
  if (start < 0 || count < 0 || start + count > rows_)
    fail("{}: rows [{}, {}) are outside the file's {} rows", path_, start, start + count, rows_);
  const size_t row_bytes = H5Tget_size(memory_type_.get());
  std::vector<unsigned char> buffer(static_cast<size_t>(count) * row_bytes);
  h5_read_rows(dataset_.get(), memory_type_.get(), start, count, buffer.data(), path_ + ": /table/table");
  const int n = n_constituents_;
  out.resize(0, n);
  out.constituents.reserve(static_cast<size_t>(count) * n * 4);
  for (int64_t r = 0; r < count; ++r) {
    const unsigned char* row = buffer.data() + r * row_bytes;
    const float* values = reinterpret_cast<const float*>(row);
    int64_t block1[kMaxIntegerColumns] = {};  // the width is checked against this bound on opening
    std::memcpy(block1, row + block0_width_ * 4, sizeof(int64_t) * block1_width_);
    const int64_t label = block1[label_column_];
    if (label != 0 && label != 1)
      fail("{}: row {} has label is_signal_new = {}; labels must be 0 (QCD) or 1 (top)", path_, start + r, label);
    bool finite = true;
    for (int i = 0; i < block0_width_ && finite; ++i) finite = std::isfinite(values[i]);
    if (!finite) {
      if (dropped.count++ == 0) dropped.first_row = start + r;
      continue;
    }
    out.constituents.insert(out.constituents.end(), values, values + n * 4);
    out.truth.insert(out.truth.end(), values + n * 4, values + n * 4 + 4);
    out.labels.push_back(label);
    out.ttv.push_back(ttv_column_ >= 0 && ttv_column_ < block1_width_ ? block1[ttv_column_] : 0);
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
