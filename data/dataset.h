// Any file of jets toptag reads: the reference dataset layout (constituents, turned into images on
// the fly) or a cached image file. Every command that reads jets goes through JetFile.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/image_file.h"
#include "data/reference_file.h"

namespace toptag {

// A range of examples read from a file: images are made later (they are large), constituents kept.
struct Examples {
  JetBatch jets;                // reference files
  Tensor images;                // image files: (count, C, H, W)
  std::vector<int64_t> labels;  // both
  std::vector<int64_t> rows;    // row of each example in the file
  int64_t size() const { return static_cast<int64_t>(labels.size()); }
};

class JetFile {
 public:
  // Opens either kind of file; throws naming the file if it is neither. `key` picks the pandas
  // object of a jet file holding several ("": the only one; an image file takes none).
  explicit JetFile(const std::string& path, const std::string& key = "");

  const std::string& path() const { return path_; }
  bool has_constituents() const { return reference_.has_value(); }
  int64_t size() const;
  // The image options to use for this file: `requested` for jets; for cached images, the file's own
  // size and channels (an explicit request for different ones is an error).
  ImageOptions image_options(const ImageOptions& requested, bool size_explicit, bool channels_explicit) const;
  // An image file's images must be what `expected` (the options of `whose`: a checkpoint, the
  // training file) makes: same size and channels, and the same preprocessing where the file records
  // it. An error naming both otherwise. Jet files are imaged with `expected`: nothing to check.
  void check_images_match(const ImageOptions& expected, const std::string& whose) const;

  // Rows [start, start + count). Jets with NaN/inf are dropped and counted in `dropped`.
  Examples read(int64_t start, int64_t count, NonFiniteReport& dropped) const;
  // Images (n, C, H, W) of examples[indices[i]], made with `options` (reference files) or copied.
  // Single-threaded: it runs on the loader's background thread.
  Tensor images(const Examples& examples, std::span<const int64_t> indices, const ImageOptions& options) const;

  const ReferenceFile* reference() const { return reference_ ? &*reference_ : nullptr; }
  const ImageFile* image_file() const { return images_ ? &*images_ : nullptr; }

 private:
  std::string path_;
  std::optional<ReferenceFile> reference_;
  std::optional<ImageFile> images_;
};

// All images and labels of a file (rows [0, min(size, max_jets))), made in parallel. For evaluation
// sets and tests; training streams through Loader instead.
struct ImageSet {
  Tensor images;
  std::vector<int64_t> labels;
  NonFiniteReport dropped;
};
ImageSet read_all_images(const JetFile& file, const ImageOptions& options, int64_t max_jets = 0);

}  // namespace toptag
