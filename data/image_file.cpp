#include "data/image_file.h"

#include "nn/check.h"

namespace toptag {

namespace {
constexpr hsize_t kChunkImages = 64;
}

bool ImageFile::looks_like(hid_t file) {
  return h5_exists(file, "/images") && h5_exists(file, "/labels");
}

ImageFile::ImageFile(const std::string& path) : path_(path), file_(h5_open(path)) {
  if (!looks_like(file_.get())) fail("{}: not a toptag image file (needs datasets /images and /labels)", path);
  if (auto format = h5_attr_int(file_.get(), "toptag_images"); format && *format > kImageFileFormat)
    fail("{}: image file format {} is newer than this toptag understands ({}); upgrade toptag", path, *format,
         kImageFileFormat);
  const std::vector<int64_t> shape = h5_dataset_shape(file_.get(), "images", path);
  const std::vector<int64_t> label_shape = h5_dataset_shape(file_.get(), "labels", path);
  if (shape.size() != 4) fail("{}: /images must be [N, C, H, W], found rank {}", path, shape.size());
  if (shape[2] != shape[3]) fail("{}: /images must hold square images, found {}x{}", path, shape[2], shape[3]);
  if (label_shape.size() != 1 || label_shape[0] != shape[0])
    fail("{}: /labels must be [N] with N = {} (the number of images)", path, shape[0]);
  rows_ = shape[0];
  channels_ = static_cast<int>(shape[1]);
  size_ = static_cast<int>(shape[2]);
  preprocessing_ = h5_attr_string(file_.get(), "preprocessing").value_or("unknown");
  images_ = H5Id(H5Dopen2(file_.get(), "images", H5P_DEFAULT));
  labels_ = H5Id(H5Dopen2(file_.get(), "labels", H5P_DEFAULT));
}

void ImageFile::read(int64_t start, int64_t count, Tensor& images, std::vector<int64_t>& labels) const {
  if (start < 0 || count < 0 || start + count > rows_)
    fail("{}: rows [{}, {}) are outside the file's {} images", path_, start, start + count, rows_);
  images = Tensor::empty({count, channels_, size_, size_});
  labels.resize(static_cast<size_t>(count));
  if (count == 0) return;
  {
    H5Id space(H5Dget_space(images_.get()));
    const hsize_t offset[4] = {static_cast<hsize_t>(start), 0, 0, 0};
    const hsize_t n[4] = {static_cast<hsize_t>(count), static_cast<hsize_t>(channels_), static_cast<hsize_t>(size_),
                          static_cast<hsize_t>(size_)};
    H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, offset, nullptr, n, nullptr);
    H5Id mem(H5Screate_simple(4, n, nullptr));
    if (H5Dread(images_.get(), H5T_NATIVE_FLOAT, mem.get(), space.get(), H5P_DEFAULT, images.data()) < 0)
      fail("{}: cannot read images [{}, {})", path_, start, start + count);
  }
  H5Id space(H5Dget_space(labels_.get()));
  const hsize_t offset = static_cast<hsize_t>(start), n = static_cast<hsize_t>(count);
  H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, &offset, nullptr, &n, nullptr);
  H5Id mem(H5Screate_simple(1, &n, nullptr));
  if (H5Dread(labels_.get(), H5T_NATIVE_INT64, mem.get(), space.get(), H5P_DEFAULT, labels.data()) < 0)
    fail("{}: cannot read labels [{}, {})", path_, start, start + count);
  for (int64_t i = 0; i < count; ++i)
    if (labels[i] != 0 && labels[i] != 1)
      fail("{}: image {} has label {}; labels must be 0 (QCD) or 1 (top)", path_, start + i, labels[i]);
}

ImageWriter::ImageWriter(const std::string& path, const ImageOptions& options) : file_(path), options_(options) {
  validate(options);
  const hsize_t C = options.channels, S = options.size;
  const hsize_t zero4[4] = {0, C, S, S}, max4[4] = {H5S_UNLIMITED, C, S, S}, chunk4[4] = {kChunkImages, C, S, S};
  H5Id space(H5Screate_simple(4, zero4, max4));
  H5Id plist(H5Pcreate(H5P_DATASET_CREATE));
  H5Pset_chunk(plist.get(), 4, chunk4);
  H5Pset_shuffle(plist.get());
  H5Pset_deflate(plist.get(), 1);  // images are mostly empty pixels: cheap compression pays off
  images_ = H5Id(H5Dcreate2(file_.id(), "images", H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, plist.get(), H5P_DEFAULT));
  const hsize_t zero = 0, unlimited = H5S_UNLIMITED, chunk = 4096;
  H5Id lspace(H5Screate_simple(1, &zero, &unlimited));
  H5Id lplist(H5Pcreate(H5P_DATASET_CREATE));
  H5Pset_chunk(lplist.get(), 1, &chunk);
  labels_ = H5Id(H5Dcreate2(file_.id(), "labels", H5T_STD_I64LE, lspace.get(), H5P_DEFAULT, lplist.get(), H5P_DEFAULT));
  if (!images_.valid() || !labels_.valid()) fail("{}: cannot create /images and /labels", path);
  h5_set_attr(file_.id(), "toptag_images", kImageFileFormat);
  h5_set_attr(file_.id(), "preprocessing", options.describe());
  h5_set_attr(file_.id(), "extent", options.extent);
}

void ImageWriter::append(const Tensor& images, const std::vector<int64_t>& labels) {
  const int64_t n = images.dim(0);
  expect_shape(images, Shape{n, options_.channels, options_.size, options_.size}, "images appended to " + file_.path());
  if (static_cast<int64_t>(labels.size()) != n) fail("{}: {} labels for {} images", file_.path(), labels.size(), n);
  if (n == 0) return;
  const hsize_t C = options_.channels, S = options_.size;
  const hsize_t new_dims[4] = {static_cast<hsize_t>(rows_ + n), C, S, S};
  H5Dset_extent(images_.get(), new_dims);
  const hsize_t offset[4] = {static_cast<hsize_t>(rows_), 0, 0, 0}, count[4] = {static_cast<hsize_t>(n), C, S, S};
  H5Id space(H5Dget_space(images_.get()));
  H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, offset, nullptr, count, nullptr);
  H5Id mem(H5Screate_simple(4, count, nullptr));
  if (H5Dwrite(images_.get(), H5T_NATIVE_FLOAT, mem.get(), space.get(), H5P_DEFAULT, images.data()) < 0)
    fail("{}: cannot write images", file_.path());
  const hsize_t new_len = new_dims[0];
  H5Dset_extent(labels_.get(), &new_len);
  H5Id lspace(H5Dget_space(labels_.get()));
  H5Sselect_hyperslab(lspace.get(), H5S_SELECT_SET, offset, nullptr, count, nullptr);
  H5Id lmem(H5Screate_simple(1, count, nullptr));
  if (H5Dwrite(labels_.get(), H5T_NATIVE_INT64, lmem.get(), lspace.get(), H5P_DEFAULT, labels.data()) < 0)
    fail("{}: cannot write labels", file_.path());
  rows_ += n;
}

void ImageWriter::close() {
  images_.reset();
  labels_.reset();
  file_.commit();
}

}  // namespace toptag
