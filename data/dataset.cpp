#include "data/dataset.h"

#include <cstring>

#include "nn/check.h"

namespace toptag {

JetFile::JetFile(const std::string& path, const std::string& key) : path_(path) {
  H5Id file = h5_open(path);
  if (ReferenceFile::looks_like(file.get())) {
    reference_.emplace(path, key);
  } else if (ImageFile::looks_like(file.get())) {
    if (!key.empty()) fail("{}: a toptag image file has no pandas keys (--key {})", path, key);
    images_.emplace(path);
  } else {
    fail(
        "{}: neither a pandas jet file (a DataFrame written by to_hdf, as the reference /table/table) nor a "
        "toptag image file (/images, /labels)",
        path);
  }
}

int64_t JetFile::size() const {
  return reference_ ? reference_->size() : images_->size();
}

ImageOptions JetFile::image_options(const ImageOptions& requested, bool size_explicit, bool channels_explicit) const {
  if (reference_) return requested;
  ImageOptions o = requested;
  if (size_explicit && requested.size != images_->image_size())
    fail("{}: holds {}x{} images, but --image-size {} was requested", path_, images_->image_size(),
         images_->image_size(), requested.size);
  if (channels_explicit && requested.channels != images_->channels())
    fail("{}: holds {}-channel images, but --channels {} was requested", path_, images_->channels(),
         requested.channels);
  o.size = images_->image_size();
  o.channels = images_->channels();
  return o;
}

void JetFile::check_images_match(const ImageOptions& expected, const std::string& whose) const {
  if (reference_) return;
  const ImageFile& f = *images_;
  if (f.image_size() != expected.size || f.channels() != expected.channels)
    fail("{}: holds {}x{}x{} images, but {} takes {}x{}x{}", path_, f.image_size(), f.image_size(), f.channels(), whose,
         expected.size, expected.size, expected.channels);
  if (f.preprocessing() != "unknown" && f.preprocessing() != expected.describe())
    fail("{}: images were made with '{}', but {} takes '{}'", path_, f.preprocessing(), whose, expected.describe());
}

Examples JetFile::read(int64_t start, int64_t count, NonFiniteReport& dropped) const {
  Examples ex;
  if (reference_) {
    reference_->read(start, count, ex.jets, dropped);
    ex.labels = ex.jets.labels;
    ex.rows = ex.jets.rows;
    return ex;
  }
  images_->read(start, count, ex.images, ex.labels);
  // Cached images can hold NaN too: drop those rows the same way.
  const int64_t per = ex.images.numel() / std::max<int64_t>(count, 1);
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < count; ++i) {
    if (all_finite({ex.images.data() + i * per, static_cast<size_t>(per)})) {
      keep.push_back(i);
    } else if (dropped.count++ == 0) {
      dropped.first_row = start + i;
    }
  }
  ex.rows.resize(keep.size());
  for (size_t i = 0; i < keep.size(); ++i) ex.rows[i] = start + keep[i];
  if (static_cast<int64_t>(keep.size()) != count) {
    Tensor kept =
        Tensor::empty({static_cast<int64_t>(keep.size()), ex.images.dim(1), ex.images.dim(2), ex.images.dim(3)});
    std::vector<int64_t> labels;
    for (size_t i = 0; i < keep.size(); ++i) {
      std::memcpy(kept.data() + i * per, ex.images.data() + keep[i] * per, per * sizeof(float));
      labels.push_back(ex.labels[keep[i]]);
    }
    ex.images = kept;
    ex.labels = labels;
  }
  return ex;
}

Tensor JetFile::images(const Examples& ex, std::span<const int64_t> indices, const ImageOptions& o) const {
  const int64_t n = static_cast<int64_t>(indices.size());
  Tensor out = Tensor::empty({n, o.channels, o.size, o.size});
  if (reference_) {
    const int64_t per_jet = static_cast<int64_t>(ex.jets.n_constituents) * 4;
    for (int64_t i = 0; i < n; ++i)
      jet_image(std::span<const float>(ex.jets.constituents).subspan(indices[i] * per_jet, per_jet), o,
                std::span<float>(out.data() + i * o.pixels(), static_cast<size_t>(o.pixels())));
  } else {
    for (int64_t i = 0; i < n; ++i)
      std::memcpy(out.data() + i * o.pixels(), ex.images.data() + indices[i] * o.pixels(), o.pixels() * sizeof(float));
  }
  return out;
}

ImageSet read_all_images(const JetFile& file, const ImageOptions& options, int64_t max_jets) {
  const int64_t n = max_jets > 0 ? std::min(max_jets, file.size()) : file.size();
  ImageSet set;
  Examples ex = file.read(0, n, set.dropped);
  set.labels = ex.labels;
  if (file.has_constituents()) {
    set.images = jet_images(ex.jets.constituents, ex.size(), ex.jets.n_constituents, options);
  } else {
    set.images = ex.images;
  }
  return set;
}

}  // namespace toptag
