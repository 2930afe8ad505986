#include "data/pandas_frame.h"

#include <fmt/format.h>

#include <algorithm>

#include "nn/check.h"

namespace toptag {

namespace {

constexpr H5Z_filter_t kBloscFilter = 32001;
// Keys are found by walking groups; pandas nests them (key "a/b"), never this deep. The bound also
// stops a walk round a group hard-linked into its own subtree.
constexpr int kMaxKeyDepth = 8;
// Column names are read whole: bounds far above any DataFrame's (the reference files have 806 columns).
constexpr int64_t kMaxColumns = int64_t{1} << 20;
constexpr size_t kMaxNameBytes = 4096;

bool is_group(hid_t loc, const std::string& name) {
  H5L_info_t link;
  if (H5Lget_info(loc, name.c_str(), &link, H5P_DEFAULT) < 0 || link.type != H5L_TYPE_HARD) return false;
  H5O_info_t info;
  return H5Oget_info_by_name2(loc, name.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT) >= 0 &&
         info.type == H5O_TYPE_GROUP;
}

void collect_keys(hid_t group, const std::string& prefix, int depth, std::vector<std::string>& keys) {
  if (depth > kMaxKeyDepth) return;
  for (const std::string& name : h5_members(group)) {
    if (!is_group(group, name)) continue;
    H5Id child(H5Gopen2(group, name.c_str(), H5P_DEFAULT));
    if (!child.valid()) continue;
    if (H5Aexists(child.get(), "pandas_type") > 0) {
      keys.push_back(prefix + "/" + name);
    } else {
      collect_keys(child.get(), prefix + "/" + name, depth + 1, keys);
    }
  }
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

// The strings of a one-dimensional fixed-length string dataset (a fixed frame's blockN_items).
std::vector<std::string> read_strings(hid_t group, const std::string& name, const std::string& path) {
  H5Id ds = h5_open_dataset(group, name, path);
  H5Id type(H5Dget_type(ds.get()));
  const std::vector<int64_t> shape = h5_shape(ds.get());
  if (H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0 || shape.size() != 1)
    fail("{}: '{}' is not a list of column names (fixed-length strings)", path, name);
  const size_t size = H5Tget_size(type.get());
  if (shape[0] > kMaxColumns || size > kMaxNameBytes)
    fail("{}: '{}' holds {} names of {} bytes: more than a DataFrame's columns", path, name, shape[0], size);
  std::vector<char> bytes(static_cast<size_t>(shape[0]) * size);
  H5Id mem(H5Tcopy(type.get()));  // HDF5 converts no strings between character sets: read as stored
  if (!bytes.empty() && H5Dread(ds.get(), mem.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes.data()) < 0)
    fail("{}: cannot read '{}'", path, name);
  std::vector<std::string> names;
  for (int64_t i = 0; i < shape[0]; ++i) {
    std::string s(bytes.data() + i * size, size);
    names.push_back(s.substr(0, s.find('\0')));
  }
  return names;
}

std::string class_name(H5T_class_t c) {
  switch (c) {
    case H5T_STRING:
      return "strings";
    case H5T_BITFIELD:
    case H5T_ENUM:
      return "booleans or enums";
    case H5T_VLEN:
      return "Python objects";
    default:
      return "non-numeric values";
  }
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

std::vector<std::string> pandas_keys(hid_t file) {
  std::vector<std::string> keys;
  H5Id root(H5Gopen2(file, "/", H5P_DEFAULT));
  if (root.valid()) collect_keys(root.get(), "", 0, keys);
  if (keys.empty() && h5_exists(file, "/table/table")) keys.push_back("/table");
  return keys;
}

PandasFrame::PandasFrame(const std::string& path, hid_t file, const std::string& key) : path_(path) {
  const std::vector<std::string> keys = pandas_keys(file);
  if (keys.empty()) fail("{}: holds no pandas DataFrame (no group with a pandas_type attribute)", path);
  if (key.empty()) {
    if (keys.size() > 1)
      fail("{}: holds {} pandas objects ({}); choose one with --key", path, keys.size(), fmt::join(keys, ", "));
    key_ = keys.front();
  } else {
    key_ = key.front() == '/' ? key : "/" + key;
    if (std::find(keys.begin(), keys.end(), key_) == keys.end())
      fail("{}: has no pandas key '{}' (keys: {})", path, key, fmt::join(keys, ", "));
  }
  H5Id group(H5Gopen2(file, key_.c_str(), H5P_DEFAULT));
  if (!group.valid()) fail("{}: cannot open the group of key '{}'", path, key_);
  const std::string type = h5_attr_string(group.get(), "pandas_type").value_or("frame_table");
  if (type == "frame_table") {
    open_table(group.get());
  } else if (type == "frame") {
    open_fixed(group.get());
  } else {
    fail("{}: key '{}' holds a pandas '{}', not a DataFrame (to_hdf of a DataFrame writes 'frame' or 'frame_table')",
         path, key_, type);
  }
}

void PandasFrame::open_table(hid_t group) {
  const std::string where = key_ + "/table";
  table_ = h5_open_dataset(group, "table", path_);
  H5Id type(H5Dget_type(table_.get()));
  if (H5Tget_class(type.get()) != H5T_COMPOUND) fail("{}: {} does not hold compound rows", path_, where);
  const std::vector<int64_t> shape = h5_shape(table_.get());
  if (shape.size() != 1) fail("{}: {} is not one-dimensional", path_, where);
  rows_ = shape[0];
  check_filters(table_.get(), path_);
  const int members = H5Tget_nmembers(type.get());
  for (int m = 0; m < members; ++m) {
    char* raw = H5Tget_member_name(type.get(), static_cast<unsigned>(m));
    const std::string name = raw ? raw : "";
    H5free_memory(raw);
    if (name == "index" || name.empty()) continue;
    Block b;
    b.member = name;
    b.what = fmt::format("{} in {}", name, where);
    H5Id member(H5Tget_member_type(type.get(), static_cast<unsigned>(m)));
    if (H5Tget_class(member.get()) == H5T_ARRAY) {
      if (H5Tget_array_ndims(member.get()) != 1) fail("{}: {} is not one-dimensional", path_, b.what);
      hsize_t dim = 0;
      H5Tget_array_dims2(member.get(), &dim);
      if (dim > static_cast<hsize_t>(kMaxColumns))
        fail("{}: {} holds {} columns, more than toptag reads", path_, b.what, dim);
      b.width = static_cast<int>(dim);
      H5Id base(H5Tget_super(member.get()));
      b.stored_class = H5Tget_class(base.get());
    } else {
      b.width = 1;
      b.scalar = true;
      b.stored_class = H5Tget_class(member.get());
    }
    // values_block_N names its columns in values_block_N_kind; a data column, NAME_kind, its own.
    if (std::optional<std::string> kind = h5_attr_string(table_.get(), name + "_kind"))
      b.names = parse_pandas_kind(*kind);
    if (static_cast<int>(b.names.size()) != b.width)
      fail("{}: {} has {} columns but its attribute {}_kind names {}", path_, b.what, b.width, name, b.names.size());
    blocks_.push_back(std::move(b));
  }
}

void PandasFrame::open_fixed(hid_t group) {
  const std::vector<int64_t> index = h5_dataset_shape(group, "axis1", path_);
  if (index.size() != 1) fail("{}: {}/axis1 (the index) is not one-dimensional", path_, key_);
  rows_ = index[0];
  for (int n = 0; h5_exists(group, fmt::format("block{}_items", n)); ++n) {
    Block b;
    b.what = fmt::format("{}/block{}_values", key_, n);
    b.names = read_strings(group, fmt::format("block{}_items", n), path_);
    b.width = static_cast<int>(b.names.size());
    b.dataset = h5_open_dataset(group, fmt::format("block{}_values", n), path_);
    const std::vector<int64_t> shape = h5_shape(b.dataset.get());
    // pandas stores each block transposed: rows x columns.
    if (shape.size() != 2 || shape[0] != rows_ || shape[1] != b.width)
      fail("{}: {} has shape [{}], expected [{}, {}] (rows, the columns in block{}_items)", path_, b.what,
           fmt::join(shape, ", "), rows_, b.width, n);
    H5Id type(H5Dget_type(b.dataset.get()));
    b.stored_class = H5Tget_class(type.get());
    if (b.numeric()) check_filters(b.dataset.get(), path_);
    blocks_.push_back(std::move(b));
  }
}

std::vector<std::string> PandasFrame::columns() const {
  std::vector<std::string> names;
  for (const Block& b : blocks_) names.insert(names.end(), b.names.begin(), b.names.end());
  return names;
}

std::optional<FrameColumn> PandasFrame::find(const std::string& name) const {
  for (size_t b = 0; b < blocks_.size(); ++b)
    for (size_t i = 0; i < blocks_[b].names.size(); ++i)
      if (blocks_[b].names[i] == name) return FrameColumn{static_cast<int>(b), static_cast<int>(i)};
  return std::nullopt;
}

bool PandasFrame::is_float(const std::string& column, const FrameColumn& where) const {
  const Block& b = blocks_.at(static_cast<size_t>(where.block));
  if (!b.numeric())
    fail("{}: column '{}' under key '{}' is not numeric ({} holds {}); toptag reads float and integer columns", path_,
         column, key_, b.what, class_name(b.stored_class));
  return b.stored_class == H5T_FLOAT;
}

void PandasFrame::select(std::span<const int> blocks) {
  selected_.assign(blocks.begin(), blocks.end());
  if (!is_table()) return;
  member_offset_.assign(blocks_.size(), 0);
  size_t size = 0;
  for (int i : selected_) {
    member_offset_[static_cast<size_t>(i)] = size;
    size += blocks_[static_cast<size_t>(i)].width * blocks_[static_cast<size_t>(i)].element_bytes();
  }
  memory_type_ = H5Id(H5Tcreate(H5T_COMPOUND, std::max<size_t>(size, 1)));
  for (int i : selected_) {
    const Block& b = blocks_[static_cast<size_t>(i)];
    const hid_t base = b.stored_class == H5T_FLOAT ? H5T_NATIVE_FLOAT : H5T_NATIVE_INT64;
    const hsize_t dim = static_cast<hsize_t>(b.width);
    H5Id member(b.scalar ? H5Tcopy(base) : H5Tarray_create2(base, 1, &dim));
    H5Tinsert(memory_type_.get(), b.member.c_str(), member_offset_[static_cast<size_t>(i)], member.get());
  }
}

void PandasFrame::read(int64_t start, int64_t count, FrameRows& out) const {
  out.base_.assign(blocks_.size(), nullptr);
  out.stride_.assign(blocks_.size(), 0);
  if (is_table()) {
    const size_t row_bytes = H5Tget_size(memory_type_.get());
    out.buffers_.resize(1);
    out.buffers_[0].resize(static_cast<size_t>(count) * row_bytes);
    h5_read_rows(table_.get(), memory_type_.get(), start, count, out.buffers_[0].data(),
                 fmt::format("{}: {}/table", path_, key_));
    for (int i : selected_) {
      out.base_[static_cast<size_t>(i)] = out.buffers_[0].data() + member_offset_[static_cast<size_t>(i)];
      out.stride_[static_cast<size_t>(i)] = row_bytes;
    }
    return;
  }
  out.buffers_.resize(selected_.size());
  for (size_t s = 0; s < selected_.size(); ++s) {
    const Block& b = blocks_[static_cast<size_t>(selected_[s])];
    const size_t row_bytes = b.width * b.element_bytes();
    out.buffers_[s].resize(static_cast<size_t>(count) * row_bytes);
    h5_read_rows(b.dataset.get(), b.stored_class == H5T_FLOAT ? H5T_NATIVE_FLOAT : H5T_NATIVE_INT64, start, count,
                 out.buffers_[s].data(), path_ + ": " + b.what);
    out.base_[static_cast<size_t>(selected_[s])] = out.buffers_[s].data();
    out.stride_[static_cast<size_t>(selected_[s])] = row_bytes;
  }
}

}  // namespace toptag
