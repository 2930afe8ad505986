#include "io/h5.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <type_traits>

#include "nn/check.h"

namespace toptag {

namespace {

// HDF5 closes whatever is left open from an atexit handler; toptag closes every handle itself (RAII)
// and shuts the library down in h5_close_library, where it can skip what would crash. Set before the
// library initialises: static initialisation runs before main.
const herr_t kNoAtexit = H5dont_atexit();
bool a_file_close_failed = false;

// The file an object lives in, for messages: the user's name for it.
std::string file_of(hid_t obj) {
  const ssize_t n = H5Fget_name(obj, nullptr, 0);
  if (n <= 0) return "HDF5 file";
  std::string name(static_cast<size_t>(n) + 1, '\0');
  H5Fget_name(obj, name.data(), name.size());
  name.resize(static_cast<size_t>(n));
  return temp_file_target(name);  // a file being written is named by its target, not its temporary name
}

}  // namespace

H5Id& H5Id::operator=(H5Id&& other) noexcept {
  if (this != &other) {
    reset();
    id_ = other.id_;
    other.id_ = H5I_INVALID_HID;
  }
  return *this;
}

bool H5Id::close() {
  herr_t status = 0;
  if (id_ >= 0) {
    switch (H5Iget_type(id_)) {
      case H5I_FILE:
        status = H5Fclose(id_);
        if (status < 0) a_file_close_failed = true;
        break;
      case H5I_GROUP:
        status = H5Gclose(id_);
        break;
      case H5I_DATASET:
        status = H5Dclose(id_);
        break;
      case H5I_DATASPACE:
        status = H5Sclose(id_);
        break;
      case H5I_DATATYPE:
        status = H5Tclose(id_);
        break;
      case H5I_ATTR:
        status = H5Aclose(id_);
        break;
      case H5I_GENPROP_LST:
        status = H5Pclose(id_);
        break;
      default:
        status = H5Idec_ref(id_);
        break;
    }
  }
  id_ = H5I_INVALID_HID;
  return status >= 0;
}

void h5_close_library() {
  // HDF5 keeps a file whose close failed (its last flush hit a full disk) half-freed in its table,
  // and closing it again in H5close crashes (H5F__close_cb). The process is ending: leave it.
  if (!a_file_close_failed) H5close();
}

void h5_quiet() {
  static const bool done = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)done;
}

std::string h5_error_reason() {
  std::string innermost;
  // Walking upward starts at the function where the error was first detected.
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned n, const H5E_error2_t* e, void* out) -> herr_t {
        if (n == 0 && e->desc) *static_cast<std::string*>(out) = e->desc;
        return 0;
      },
      &innermost);
  return innermost;
}

std::string h5_write_failure() {
  const std::string reason = h5_error_reason();
  // HDF5's low-level messages end in "..., errno = 28, error message = 'No space left on device', ...".
  const std::string mark = "error message = '";
  const size_t at = reason.find(mark);
  if (at != std::string::npos) {
    const size_t end = reason.find('\'', at + mark.size());
    if (end != std::string::npos) return reason.substr(at + mark.size(), end - at - mark.size());
  }
  return reason.empty() ? "disk full?" : reason;
}

namespace {

// Why `path` could not be opened as HDF5, in the user's terms; `reason` is HDF5's innermost message.
[[noreturn]] void fail_to_open(const std::string& path, bool writable, const std::string& reason) {
  std::error_code e;
  if (!std::filesystem::exists(path, e)) fail("{}: no such file", path);
  if (std::filesystem::is_directory(path, e)) fail("{}: a directory, not an HDF5 file", path);
  if (::access(path.c_str(), writable ? R_OK | W_OK : R_OK) != 0)
    fail("{}: cannot be {} ({})", path, writable ? "written" : "read", std::strerror(errno));
  const std::string why = reason.empty() ? "" : fmt::format(" (HDF5: {})", reason);
  if (reason.find("unable to lock file") != std::string::npos)
    fail(
        "{}: locked by another process that has it open for writing{}: close it there (an h5py.File(..., 'a') "
        "in a notebook, say), or, on a file system without locks, set HDF5_USE_FILE_LOCKING=FALSE",
        path, why);
  if (reason.find("truncated file") != std::string::npos)
    fail("{}: truncated: the file ends before the data it describes{}; it was not written or copied whole", path, why);
  if (H5Fis_hdf5(path.c_str()) <= 0) fail("{}: not an HDF5 file{}", path, why);
  fail("{}: cannot open as HDF5{}", path, why);
}

}  // namespace

H5Id h5_open(const std::string& path, bool writable) {
  h5_quiet();
  H5Id f(H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, H5P_DEFAULT));
  if (!f.valid()) fail_to_open(path, writable, h5_error_reason());
  return f;
}

H5Id h5_create(const std::string& path) {
  h5_quiet();
  // Closing the file closes what is still open in it, so that the close is the last write and its
  // failure (a full disk) is reported by H5Fclose, not lost in a later close of a dataset.
  H5Id access(H5Pcreate(H5P_FILE_ACCESS));
  H5Pset_fclose_degree(access.get(), H5F_CLOSE_STRONG);
  H5Id f(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, access.get()));
  if (!f.valid()) fail("{}: cannot create file", path);
  return f;
}

bool h5_exists(hid_t loc, const std::string& path) {
  h5_quiet();
  // Check each component: H5Lexists fails (rather than returning false) when a parent is missing.
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    std::string prefix = path.substr(0, pos);
    if (prefix.empty() || prefix == "/") continue;
    if (H5Lexists(loc, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
  }
  return true;
}

H5Id h5_group(hid_t loc, const std::string& name, bool create) {
  h5_quiet();
  if (h5_exists(loc, name)) return H5Id(H5Gopen2(loc, name.c_str(), H5P_DEFAULT));
  if (!create) fail("{}: HDF5 group '{}' is missing", file_of(loc), name);
  H5Id lcpl(H5Pcreate(H5P_LINK_CREATE));
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  H5Id g(H5Gcreate2(loc, name.c_str(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT));
  if (!g.valid()) fail("{}: cannot create HDF5 group '{}'", file_of(loc), name);
  return g;
}

std::vector<std::string> h5_members(hid_t group) {
  std::vector<std::string> names;
  H5Literate(
      group, H5_INDEX_NAME, H5_ITER_INC, nullptr,
      [](hid_t, const char* name, const H5L_info_t*, void* data) -> herr_t {
        static_cast<std::vector<std::string>*>(data)->push_back(name);
        return 0;
      },
      &names);
  return names;
}

H5Id h5_open_dataset(hid_t loc, const std::string& name, const std::string& file) {
  h5_quiet();
  if (!h5_exists(loc, name)) fail("{}: dataset '{}' is missing", file, name);
  H5L_info_t link;
  if (H5Lget_info(loc, name.c_str(), &link, H5P_DEFAULT) >= 0 && link.type == H5L_TYPE_EXTERNAL)
    fail("{}: '{}' is an external link into another file; toptag does not follow those", file, name);
  if (H5Oexists_by_name(loc, name.c_str(), H5P_DEFAULT) <= 0)
    fail("{}: '{}' is a dangling or circular link", file, name);
  H5O_info_t info;
  if (H5Oget_info_by_name2(loc, name.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT) < 0 || info.type != H5O_TYPE_DATASET)
    fail("{}: '{}' is not a dataset", file, name);
  H5Id ds(H5Dopen2(loc, name.c_str(), H5P_DEFAULT));
  if (!ds.valid()) fail("{}: cannot open dataset '{}'", file, name);
  return ds;
}

std::vector<int64_t> h5_shape(hid_t dataset) {
  H5Id space(H5Dget_space(dataset));
  const int rank = space.valid() ? H5Sget_simple_extent_ndims(space.get()) : -1;
  if (rank < 0) fail("cannot read the dataspace of an HDF5 dataset");
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank > 0) H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return {dims.begin(), dims.end()};
}

namespace {

// The dataset's dimensions with the first replaced: a row-range selection's extent.
std::vector<hsize_t> row_block(hid_t dataset, int64_t rows, const std::string& what) {
  const std::vector<int64_t> shape = h5_shape(dataset);
  if (shape.empty()) fail("{}: a scalar dataset has no rows", what);
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  dims[0] = static_cast<hsize_t>(rows);
  return dims;
}

}  // namespace

void h5_read_rows(hid_t dataset, hid_t mem_type, int64_t start, int64_t count, void* buffer, const std::string& what) {
  const std::vector<int64_t> shape = h5_shape(dataset);
  if (shape.empty() || start < 0 || count < 0 || start + count > shape[0])
    fail("{}: rows [{}, {}) are outside the dataset's {} rows", what, start, start + count,
         shape.empty() ? 0 : shape[0]);
  if (count == 0) return;
  const std::vector<hsize_t> n = row_block(dataset, count, what);
  std::vector<hsize_t> offset(n.size(), 0);
  offset[0] = static_cast<hsize_t>(start);
  H5Id file_space(H5Dget_space(dataset));
  H5Id mem_space(H5Screate_simple(static_cast<int>(n.size()), n.data(), nullptr));
  if (!file_space.valid() || !mem_space.valid() ||
      H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, offset.data(), nullptr, n.data(), nullptr) < 0 ||
      H5Dread(dataset, mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT, buffer) < 0)
    fail("{}: cannot read rows [{}, {}) (corrupt file, or a missing compression filter)", what, start, start + count);
}

H5Id h5_create_rows(hid_t loc, const std::string& name, hid_t file_type, std::span<const int64_t> row_dims,
                    int64_t chunk_rows, bool compress, const std::string& what) {
  std::vector<hsize_t> dims{0}, max_dims{H5S_UNLIMITED}, chunk{static_cast<hsize_t>(chunk_rows)};
  for (int64_t d : row_dims) {
    dims.push_back(static_cast<hsize_t>(d));
    max_dims.push_back(static_cast<hsize_t>(d));
    chunk.push_back(static_cast<hsize_t>(d));
  }
  const int rank = static_cast<int>(dims.size());
  H5Id space(H5Screate_simple(rank, dims.data(), max_dims.data()));
  H5Id plist(H5Pcreate(H5P_DATASET_CREATE));
  bool ok = space.valid() && plist.valid() && H5Pset_chunk(plist.get(), rank, chunk.data()) >= 0;
  if (ok && compress) ok = H5Pset_shuffle(plist.get()) >= 0 && H5Pset_deflate(plist.get(), 1) >= 0;
  H5Id ds;
  if (ok) ds = H5Id(H5Dcreate2(loc, name.c_str(), file_type, space.get(), H5P_DEFAULT, plist.get(), H5P_DEFAULT));
  if (!ds.valid()) fail("{}: cannot create dataset '{}'", what, name);
  return ds;
}

void h5_append_rows(hid_t dataset, hid_t mem_type, int64_t count, const void* buffer, const std::string& what) {
  if (count == 0) return;
  std::vector<hsize_t> extent = row_block(dataset, 0, what);
  const hsize_t start = static_cast<hsize_t>(h5_shape(dataset)[0]);
  extent[0] = start + static_cast<hsize_t>(count);
  std::vector<hsize_t> offset(extent.size(), 0), n = extent;
  offset[0] = start;
  n[0] = static_cast<hsize_t>(count);
  if (H5Dset_extent(dataset, extent.data()) < 0) fail("{}: cannot grow the dataset to {} rows", what, extent[0]);
  H5Id file_space(H5Dget_space(dataset));
  H5Id mem_space(H5Screate_simple(static_cast<int>(n.size()), n.data(), nullptr));
  if (!file_space.valid() || !mem_space.valid() ||
      H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, offset.data(), nullptr, n.data(), nullptr) < 0 ||
      H5Dwrite(dataset, mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT, buffer) < 0)
    fail("{}: cannot write rows [{}, {}) ({})", what, start, extent[0], h5_write_failure());
}

namespace {

template <class T>
void write_dataset(hid_t loc, const std::string& name, hid_t mem_type, hid_t file_type, std::span<const hsize_t> dims,
                   const T* data) {
  H5Id space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
  if (dims.empty()) space = H5Id(H5Screate(H5S_SCALAR));
  if (h5_exists(loc, name)) H5Ldelete(loc, name.c_str(), H5P_DEFAULT);
  H5Id lcpl(H5Pcreate(H5P_LINK_CREATE));
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  H5Id ds(H5Dcreate2(loc, name.c_str(), file_type, space.get(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT));
  if (!ds.valid()) fail("{}: cannot create HDF5 dataset '{}'", file_of(loc), name);
  // Small datasets go through HDF5's sieve buffer and reach the disk when the dataset closes: a full
  // disk shows there, and an unchecked close would leave zeros in a file that looks whole.
  if (H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0 || !ds.close())
    fail("{}: cannot write HDF5 dataset '{}' ({})", file_of(loc), name, h5_write_failure());
}

// Whole-dataset reads allocate the dataset's size first, so its dimensions are checked against what
// the file really stores: a chunked dataset may declare any extent and store nothing (reads give the
// fill value). Compressed data may expand, by a factor 1000 at most; small datasets always pass.
constexpr hsize_t kMaxReadElements = hsize_t{1} << 34;
constexpr hsize_t kMaxExpansion = 1000, kAlwaysAllowedBytes = hsize_t{64} << 20;

std::vector<hsize_t> dataspace_dims(hid_t ds, const std::string& name, const std::string& file) {
  const std::vector<int64_t> shape = h5_shape(ds);
  hsize_t n = 1;
  for (int64_t d : shape) {
    if (d > 0 && n > kMaxReadElements / static_cast<hsize_t>(d))
      fail("{}: dataset '{}' of shape [{}] is larger than toptag reads at once", file, name, fmt::join(shape, ","));
    n *= static_cast<hsize_t>(d);
  }
  const hsize_t bytes = n * 8, stored = H5Dget_storage_size(ds);
  if (bytes > kAlwaysAllowedBytes && bytes / kMaxExpansion > stored)
    fail("{}: dataset '{}' declares shape [{}] but stores only {} bytes", file, name, fmt::join(shape, ","), stored);
  return {shape.begin(), shape.end()};
}

void expect_numeric(hid_t ds, const std::string& name, const std::string& file) {
  H5Id type(H5Dget_type(ds));
  const H5T_class_t cls = H5Tget_class(type.get());
  if (cls != H5T_FLOAT && cls != H5T_INTEGER) fail("{}: dataset '{}' is not numeric", file, name);
}

}  // namespace

void h5_write_tensor(hid_t loc, const std::string& name, const Tensor& tensor) {
  std::vector<hsize_t> dims(tensor.shape().dims().begin(), tensor.shape().dims().end());
  write_dataset(loc, name, H5T_NATIVE_FLOAT, H5T_IEEE_F32LE, dims, tensor.data());
}

std::vector<int64_t> h5_dataset_shape(hid_t loc, const std::string& name, const std::string& file) {
  H5Id ds = h5_open_dataset(loc, name, file);
  return h5_shape(ds.get());
}

Tensor h5_read_tensor(hid_t loc, const std::string& name, const std::string& file) {
  H5Id ds = h5_open_dataset(loc, name, file);
  expect_numeric(ds.get(), name, file);
  std::vector<hsize_t> dims = dataspace_dims(ds.get(), name, file);
  std::vector<int64_t> shape(dims.begin(), dims.end());
  if (shape.size() > static_cast<size_t>(Shape::kMaxRank)) fail("{}: dataset '{}' has too many dimensions", file, name);
  Tensor t = Tensor::empty(Shape(std::span<const int64_t>(shape)));
  if (H5Dread(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data()) < 0)
    fail("{}: cannot read dataset '{}' as float32", file, name);
  return t;
}

void h5_write_int64(hid_t loc, const std::string& name, const std::vector<int64_t>& values) {
  const hsize_t n = values.size();
  write_dataset(loc, name, H5T_NATIVE_INT64, H5T_STD_I64LE, std::span<const hsize_t>(&n, 1), values.data());
}

std::vector<int64_t> h5_read_int64(hid_t loc, const std::string& name, const std::string& file) {
  H5Id ds = h5_open_dataset(loc, name, file);
  expect_numeric(ds.get(), name, file);
  std::vector<hsize_t> dims = dataspace_dims(ds.get(), name, file);
  hsize_t n = 1;
  for (hsize_t d : dims) n *= d;
  std::vector<int64_t> values(n);
  if (n > 0 && H5Dread(ds.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()) < 0)
    fail("{}: cannot read dataset '{}' as int64", file, name);
  return values;
}

namespace {

// The HDF5 memory and file types of an integer element type.
template <class T>
std::pair<hid_t, hid_t> integer_types() {
  if constexpr (std::is_same_v<T, int8_t>) return {H5T_NATIVE_INT8, H5T_STD_I8LE};
  if constexpr (std::is_same_v<T, int32_t>) return {H5T_NATIVE_INT32, H5T_STD_I32LE};
  if constexpr (std::is_same_v<T, int64_t>) return {H5T_NATIVE_INT64, H5T_STD_I64LE};
}

}  // namespace

template <class T>
void h5_write_array(hid_t loc, const std::string& name, std::span<const T> values, std::span<const int64_t> shape) {
  hsize_t count = 1;
  for (int64_t d : shape) count *= static_cast<hsize_t>(d);
  if (count != values.size())
    fail("HDF5 dataset '{}': {} values for a shape of {} elements", name, values.size(), count);
  const std::vector<hsize_t> dims(shape.begin(), shape.end());
  const auto [mem, file] = integer_types<T>();
  write_dataset(loc, name, mem, file, dims, values.data());
}

template <class T>
std::vector<T> h5_read_array(hid_t loc, const std::string& name, const std::string& file, std::vector<int64_t>* shape) {
  H5Id ds = h5_open_dataset(loc, name, file);
  H5Id type(H5Dget_type(ds.get()));
  if (H5Tget_class(type.get()) != H5T_INTEGER) fail("{}: dataset '{}' does not hold integers", file, name);
  const std::vector<hsize_t> space = dataspace_dims(ds.get(), name, file);
  const std::vector<int64_t> dims(space.begin(), space.end());
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  std::vector<T> values(static_cast<size_t>(n));
  if (n > 0 && H5Dread(ds.get(), integer_types<T>().first, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()) < 0)
    fail("{}: cannot read dataset '{}'", file, name);
  if (shape) *shape = dims;
  return values;
}

template void h5_write_array<int8_t>(hid_t, const std::string&, std::span<const int8_t>, std::span<const int64_t>);
template void h5_write_array<int32_t>(hid_t, const std::string&, std::span<const int32_t>, std::span<const int64_t>);
template std::vector<int8_t> h5_read_array<int8_t>(hid_t, const std::string&, const std::string&,
                                                   std::vector<int64_t>*);
template std::vector<int32_t> h5_read_array<int32_t>(hid_t, const std::string&, const std::string&,
                                                     std::vector<int64_t>*);

namespace {

H5Id replace_attr(hid_t obj, const std::string& name, hid_t type, hid_t space) {
  if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
  H5Id a(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT));
  if (!a.valid()) fail("{}: cannot create HDF5 attribute '{}'", file_of(obj), name);
  return a;
}

template <class T>
void set_scalar_attr(hid_t obj, const std::string& name, hid_t mem_type, hid_t file_type, T value) {
  H5Id space(H5Screate(H5S_SCALAR));
  H5Id a = replace_attr(obj, name, file_type, space.get());
  H5Awrite(a.get(), mem_type, &value);
}

// Opens attribute `name` of `obj` if present, and checks it holds one value (a scalar or a
// one-element array) of class `want`: anything else is an error naming the file and attribute,
// never a read past a one-value buffer or a silently ignored value.
std::optional<H5Id> open_single_attr(hid_t obj, const std::string& name, std::initializer_list<H5T_class_t> want,
                                     const char* what) {
  h5_quiet();
  if (H5Aexists(obj, name.c_str()) <= 0) return std::nullopt;
  H5Id a(H5Aopen(obj, name.c_str(), H5P_DEFAULT));
  H5Id type(H5Aget_type(a.get()));
  H5Id space(H5Aget_space(a.get()));
  if (!a.valid() || !type.valid() || !space.valid()) fail("{}: cannot read attribute '{}'", file_of(obj), name);
  const H5T_class_t cls = H5Tget_class(type.get());
  if (std::find(want.begin(), want.end(), cls) == want.end())
    fail("{}: attribute '{}' must be a {}", file_of(obj), name, what);
  if (H5Sget_simple_extent_npoints(space.get()) != 1)
    fail("{}: attribute '{}' must hold a single {}, found {} values", file_of(obj), name, what,
         H5Sget_simple_extent_npoints(space.get()));
  return a;
}

template <class T>
std::optional<T> scalar_attr(hid_t obj, const std::string& name, hid_t mem_type) {
  std::optional<H5Id> a = open_single_attr(obj, name, {H5T_INTEGER, H5T_FLOAT}, "number");
  if (!a) return std::nullopt;
  T value{};
  if (H5Aread(a->get(), mem_type, &value) < 0) fail("{}: cannot read attribute '{}'", file_of(obj), name);
  return value;
}

}  // namespace

void h5_set_attr(hid_t obj, const std::string& name, const std::string& value) {
  H5Id type(H5Tcopy(H5T_C_S1));
  H5Tset_size(type.get(), value.size() + 1);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  H5Id space(H5Screate(H5S_SCALAR));
  H5Id a = replace_attr(obj, name, type.get(), space.get());
  H5Awrite(a.get(), type.get(), value.c_str());
}

void h5_set_attr_bytes(hid_t obj, const std::string& name, const std::string& value) {
  H5Id type(H5Tcopy(H5T_C_S1));
  H5Tset_size(type.get(), std::max<size_t>(value.size(), 1));  // HDF5 strings hold at least one byte
  H5Tset_strpad(type.get(), H5T_STR_NULLPAD);
  H5Id space(H5Screate(H5S_SCALAR));
  H5Id a = replace_attr(obj, name, type.get(), space.get());
  std::string stored = value;
  stored.resize(std::max<size_t>(value.size(), 1), '\0');
  H5Awrite(a.get(), type.get(), stored.data());
}

void h5_set_attr(hid_t obj, const std::string& name, int64_t value) {
  set_scalar_attr(obj, name, H5T_NATIVE_INT64, H5T_STD_I64LE, value);
}

void h5_set_attr(hid_t obj, const std::string& name, double value) {
  set_scalar_attr(obj, name, H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE, value);
}

std::optional<int64_t> h5_attr_int(hid_t obj, const std::string& name) {
  return scalar_attr<int64_t>(obj, name, H5T_NATIVE_INT64);
}

std::optional<double> h5_attr_double(hid_t obj, const std::string& name) {
  return scalar_attr<double>(obj, name, H5T_NATIVE_DOUBLE);
}

std::optional<std::string> h5_attr_string(hid_t obj, const std::string& name) {
  std::optional<H5Id> attr = open_single_attr(obj, name, {H5T_STRING}, "string");
  if (!attr) return std::nullopt;
  const H5Id& a = *attr;
  H5Id type(H5Aget_type(a.get()));
  // Read with a copy of the stored type: HDF5 will not convert between ASCII and UTF-8 strings.
  H5Id mem(H5Tcopy(type.get()));
  if (H5Tis_variable_str(type.get()) > 0) {
    char* s = nullptr;
    if (H5Aread(a.get(), mem.get(), &s) < 0 || s == nullptr) return std::nullopt;
    std::string value(s);
    H5free_memory(s);
    return value;
  }
  const size_t size = H5Tget_size(type.get());
  std::string value(size, '\0');
  if (H5Aread(a.get(), mem.get(), value.data()) < 0) return std::nullopt;
  value.resize(value.find('\0') == std::string::npos ? size : value.find('\0'));
  return value;
}

AtomicH5File::AtomicH5File(std::string path) : path_(std::move(path)) {
  const std::filesystem::path parent = std::filesystem::path(path_).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  temp_ = std::make_unique<TempFile>(path_);
  file_ = h5_create(temp_->path());
}

AtomicH5File::~AtomicH5File() {
  file_.reset();  // closed before the temporary file is removed
}

void AtomicH5File::commit() {
  // The last writes happen at the flush and the close (HDF5 buffers raw data): a full disk shows there.
  if (H5Fflush(file_.get(), H5F_SCOPE_GLOBAL) < 0 || !file_.close())
    fail("{}: cannot write ({})", path_, h5_write_failure());
  const int fd = ::open(temp_->path().c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || ::fsync(fd) != 0) {
    const int e = errno;
    if (fd >= 0) ::close(fd);
    fail("{}: cannot write: {}", path_, std::strerror(e));
  }
  ::close(fd);
  temp_->move_to(path_);
}

}  // namespace toptag
