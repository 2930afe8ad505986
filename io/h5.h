// A thin RAII layer over the HDF5 C API: handles that close themselves, and tensor/attribute
// helpers that throw toptag::Error naming the file and object instead of printing HDF5's stack.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "io/files.h"
#include "nn/tensor.h"

namespace toptag {

// An owned HDF5 identifier (file, group, dataset, dataspace, type or attribute).
class H5Id {
 public:
  H5Id() = default;
  explicit H5Id(hid_t id) : id_(id) {}
  H5Id(H5Id&& other) noexcept : id_(other.id_) { other.id_ = H5I_INVALID_HID; }
  H5Id& operator=(H5Id&& other) noexcept;
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  ~H5Id() { reset(); }

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset() { close(); }
  // Closes the object now; false if HDF5 failed to (a file whose last writes hit a full disk).
  bool close();

 private:
  hid_t id_ = H5I_INVALID_HID;
};

// Silences HDF5's automatic error printing (we report errors ourselves). Idempotent.
void h5_quiet();

// Shuts HDF5 down at the end of main, once every handle is closed, unless a file's close failed (a
// full disk): HDF5 would crash closing it again. HDF5's own atexit handler is off (io/h5.cpp).
void h5_close_library();

// Open an existing file read-only (or read-write); throws naming the file and saying why it cannot
// be opened: missing, a directory, unreadable (the system's reason), locked by another process (and
// how to go on), truncated, not HDF5, or otherwise HDF5's own innermost reason.
H5Id h5_open(const std::string& path, bool writable = false);
// The innermost message on HDF5's error stack (where the failure was first detected), or "".
std::string h5_error_reason();
// Why a write failed, for messages: the system's reason HDF5 recorded ("No space left on device"),
// else HDF5's innermost message, else "disk full?".
std::string h5_write_failure();
// Create (truncate) a file.
H5Id h5_create(const std::string& path);
// Open a group or create it (and its parents) if absent.
H5Id h5_group(hid_t loc, const std::string& name, bool create);

bool h5_exists(hid_t loc, const std::string& path);
// Names of the direct members of a group.
std::vector<std::string> h5_members(hid_t group);

// Datasets. Tensors are written as float32; reading converts any floating or integer type to float32.
void h5_write_tensor(hid_t loc, const std::string& name, const Tensor& tensor);
Tensor h5_read_tensor(hid_t loc, const std::string& name, const std::string& file_for_errors);
std::vector<int64_t> h5_dataset_shape(hid_t loc, const std::string& name, const std::string& file_for_errors);
void h5_write_int64(hid_t loc, const std::string& name, const std::vector<int64_t>& values);
std::vector<int64_t> h5_read_int64(hid_t loc, const std::string& name, const std::string& file_for_errors);

// Integer arrays of any shape, stored as the little-endian type of T (int8_t, int32_t, int64_t).
// Reading converts any integer dataset to T (HDF5 saturates out-of-range values); `shape`, if given,
// receives the dataset's dimensions.
template <class T>
void h5_write_array(hid_t loc, const std::string& name, std::span<const T> values, std::span<const int64_t> shape);
template <class T>
std::vector<T> h5_read_array(hid_t loc, const std::string& name, const std::string& file_for_errors,
                             std::vector<int64_t>* shape = nullptr);

// Opens an existing dataset; throws naming the file if it is missing or not a dataset.
H5Id h5_open_dataset(hid_t loc, const std::string& name, const std::string& file_for_errors);
// The dimensions of an open dataset.
std::vector<int64_t> h5_shape(hid_t dataset);

// Row ranges of a dataset whose first dimension counts rows (jets, images): what the streaming
// readers and writers use. `what` names the file and dataset in errors.
// Reads rows [start, start + count) into `buffer`, converted to `mem_type`; the buffer holds count
// rows of (product of the other dimensions) elements of that type.
void h5_read_rows(hid_t dataset, hid_t mem_type, int64_t start, int64_t count, void* buffer, const std::string& what);
// Creates an empty, chunked dataset whose first dimension grows without limit; every row has shape
// `row_dims`. `compress`: byte shuffle + deflate level 1 (readable without plugins).
H5Id h5_create_rows(hid_t loc, const std::string& name, hid_t file_type, std::span<const int64_t> row_dims,
                    int64_t chunk_rows, bool compress, const std::string& what);
// Appends `count` rows from `buffer` (in `mem_type`) to such a dataset.
void h5_append_rows(hid_t dataset, hid_t mem_type, int64_t count, const void* buffer, const std::string& what);

// Attributes on any object.
void h5_set_attr(hid_t obj, const std::string& name, const std::string& value);
// A fixed-length ASCII string of exactly value.size() bytes, no terminator: as PyTables writes them
// (numpy reads it as bytes, which PyTables unpickles when it is a pickle).
void h5_set_attr_bytes(hid_t obj, const std::string& name, const std::string& value);
void h5_set_attr(hid_t obj, const std::string& name, int64_t value);
void h5_set_attr(hid_t obj, const std::string& name, double value);
// Attribute readers: nullopt when absent; an error naming the file and attribute when it is present
// but not one value of the expected kind (a string; an integer or float number).
std::optional<std::string> h5_attr_string(hid_t obj, const std::string& name);
std::optional<int64_t> h5_attr_int(hid_t obj, const std::string& name);
std::optional<double> h5_attr_double(hid_t obj, const std::string& name);

// An HDF5 file written under a unique temporary name beside the target (io/files.h TempFile) and
// moved into place by commit(). If commit() is never reached (an exception), the target is untouched
// and the temporary is removed.
class AtomicH5File {
 public:
  explicit AtomicH5File(std::string path);
  ~AtomicH5File();
  AtomicH5File(const AtomicH5File&) = delete;
  AtomicH5File& operator=(const AtomicH5File&) = delete;

  hid_t id() const { return file_.get(); }
  const std::string& path() const { return path_; }
  // Flushes, closes, syncs to disk and renames over the target path.
  void commit();

 private:
  std::string path_;
  std::unique_ptr<TempFile> temp_;
  H5Id file_;
};

}  // namespace toptag
