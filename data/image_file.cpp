#include "data/image_file.h"

#include "nn/check.h"

namespace toptag {

namespace {
constexpr int64_t kChunkImages = 64, kChunkLabels = 4096;
}

bool ImageFile::looks_like(hid_t file) {
  return h5_exists(file, "/images") && h5_exists(file, "/labels");
}

ImageFile::ImageFile(const std::string& path) : path_(path), file_(h5_open(path)) {
  if (!looks_like(file_.get())) fail("{}: not a toptag image file (needs datasets /images and /labels)", path);
  if (auto format = h5_attr_int(file_.get(), "toptag_images"); format && *format > kImageFileFormat)
    fail("{}: image file format {} is newer than this toptag understands ({}); upgrade toptag", path, *format,
         kImageFileFormat);
  images_ = h5_open_dataset(file_.get(), "images", path);
  labels_ = h5_open_dataset(file_.get(), "labels", path);
  const std::vector<int64_t> shape = h5_shape(images_.get());
  const std::vector<int64_t> label_shape = h5_shape(labels_.get());
  if (shape.size() != 4) fail("{}: /images must be [N, C, H, W], found rank {}", path, shape.size());
  if (shape[2] != shape[3]) fail("{}: /images must hold square images, found {}x{}", path, shape[2], shape[3]);
  if (label_shape.size() != 1 || label_shape[0] != shape[0])
    fail("{}: /labels must be [N] with N = {} (the number of images)", path, shape[0]);
  // Bounded before any narrowing or allocation: a forged shape is an error, not a wrapped int.
  if (shape[1] < 1 || shape[1] > 4 || shape[2] < 4 || shape[2] > 1024)
    fail("{}: /images has {} channels of {}x{} pixels; toptag's images have 1-4 channels of 4x4 to 1024x1024", path,
         shape[1], shape[2], shape[3]);
  rows_ = shape[0];
  channels_ = static_cast<int>(shape[1]);
  size_ = static_cast<int>(shape[2]);
  preprocessing_ = h5_attr_string(file_.get(), "preprocessing").value_or("unknown");
}

void ImageFile::read(int64_t start, int64_t count, Tensor& images, std::vector<int64_t>& labels) const {
  if (start < 0 || count < 0 || start + count > rows_)
    fail("{}: rows [{}, {}) are outside the file's {} images", path_, start, start + count, rows_);
  images = Tensor::empty({count, channels_, size_, size_});
  labels.resize(static_cast<size_t>(count));
  h5_read_rows(images_.get(), H5T_NATIVE_FLOAT, start, count, images.data(), path_ + ": /images");
  h5_read_rows(labels_.get(), H5T_NATIVE_INT64, start, count, labels.data(), path_ + ": /labels");
  for (int64_t i = 0; i < count; ++i)
    if (labels[i] != 0 && labels[i] != 1)
      fail("{}: image {} has label {}; labels must be 0 (QCD) or 1 (top)", path_, start + i, labels[i]);
}

ImageWriter::ImageWriter(const std::string& path, const ImageOptions& options) : file_(path), options_(options) {
  validate(options);
  const int64_t image_dims[3] = {options.channels, options.size, options.size};
  // Images are mostly empty pixels: cheap compression pays off.
  images_ = h5_create_rows(file_.id(), "images", H5T_IEEE_F32LE, image_dims, kChunkImages, true, path);
  labels_ = h5_create_rows(file_.id(), "labels", H5T_STD_I64LE, {}, kChunkLabels, false, path);
  h5_set_attr(file_.id(), "toptag_images", kImageFileFormat);
  h5_set_attr(file_.id(), "preprocessing", options.describe());
  h5_set_attr(file_.id(), "extent", options.extent);
}

void ImageWriter::append(const Tensor& images, const std::vector<int64_t>& labels) {
  const int64_t n = images.dim(0);
  expect_shape(images, Shape{n, options_.channels, options_.size, options_.size}, "images appended to " + file_.path());
  if (static_cast<int64_t>(labels.size()) != n) fail("{}: {} labels for {} images", file_.path(), labels.size(), n);
  h5_append_rows(images_.get(), H5T_NATIVE_FLOAT, n, images.data(), file_.path() + ": /images");
  h5_append_rows(labels_.get(), H5T_NATIVE_INT64, n, labels.data(), file_.path() + ": /labels");
  rows_ += n;
}

void ImageWriter::close() {
  // Closing a dataset writes what HDF5 still buffers: a full disk can show here.
  if (!images_.close() || !labels_.close()) fail("{}: cannot write the images ({})", file_.path(), h5_write_failure());
  file_.commit();
}

}  // namespace toptag
