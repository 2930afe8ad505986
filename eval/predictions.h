// Prediction files: what any tagger (toptag's or another system's) says about a set of jets.
//  - HDF5: /score float32 [N] (probability of top), /label int64 [N] (optional: 1 = top, 0 = QCD).
//  - CSV (by the .csv extension): a header line "score,label" (or just "score"), one jet per line.
// Both are written under a temporary name and renamed into place, so nothing is half-written.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace toptag {

struct Predictions {
  std::vector<float> score;
  std::vector<int64_t> label;  // empty when the jets were unlabelled
  bool has_labels() const { return !label.empty(); }
  int64_t size() const { return static_cast<int64_t>(score.size()); }
};

// Throws toptag::Error naming the file, line or field on anything malformed.
Predictions read_predictions(const std::string& path);
void write_predictions(const std::string& path, const Predictions& predictions);

}  // namespace toptag
