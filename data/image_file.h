// Cached jet images: HDF5 with /images float32 [N, C, H, W] and /labels int64 [N] (1 = top), plus
// root attributes recording how the images were made ("toptag_images" = format version,
// "preprocessing" = ImageOptions::describe(), "extent"). Written under a temporary name, renamed by close().
#pragma once

#include <string>
#include <vector>

#include "data/jet_image.h"
#include "io/h5.h"

namespace toptag {

constexpr int64_t kImageFileFormat = 1;

class ImageFile {
 public:
  explicit ImageFile(const std::string& path);
  static bool looks_like(hid_t file);  // has /images and /labels

  const std::string& path() const { return path_; }
  int64_t size() const { return rows_; }
  int channels() const { return channels_; }
  int image_size() const { return size_; }
  const std::string& preprocessing() const { return preprocessing_; }

  // Rows [start, start + count) -> images (count, C, H, W) and labels.
  void read(int64_t start, int64_t count, Tensor& images, std::vector<int64_t>& labels) const;

 private:
  std::string path_, preprocessing_;
  H5Id file_, images_, labels_;
  int64_t rows_ = 0;
  int channels_ = 0, size_ = 0;
};

class ImageWriter {
 public:
  ImageWriter(const std::string& path, const ImageOptions& options);
  // images: (n, C, H, W) matching the options; labels: n values.
  void append(const Tensor& images, const std::vector<int64_t>& labels);
  void close();
  int64_t size() const { return rows_; }

 private:
  AtomicH5File file_;
  H5Id images_, labels_;
  ImageOptions options_;
  int64_t rows_ = 0;
};

}  // namespace toptag
