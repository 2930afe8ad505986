#include "eval/predictions.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/files.h"
#include "io/h5.h"
#include "nn/check.h"

namespace toptag {

namespace {

bool is_csv(const std::string& path) {
  const std::string ext = std::filesystem::path(path).extension().string();
  return ext == ".csv" || ext == ".CSV";
}

Predictions read_csv(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot open", path);
  std::string line;
  if (!std::getline(in, line)) fail("{}: empty file (expected a header 'score,label')", path);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  bool with_labels;
  if (line == "score,label") {
    with_labels = true;
  } else if (line == "score") {
    with_labels = false;
  } else {
    fail("{}: line 1 is '{}'; expected the header 'score,label' or 'score'", path, line);
  }
  Predictions p;
  for (int64_t number = 2; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    std::istringstream fields(line);
    std::string score_text, label_text;
    std::getline(fields, score_text, ',');
    char* end = nullptr;
    const float score = std::strtof(score_text.c_str(), &end);
    if (score_text.empty() || *end != '\0') fail("{}: line {}: score '{}' is not a number", path, number, score_text);
    p.score.push_back(score);
    if (with_labels) {
      if (!std::getline(fields, label_text) || (label_text != "0" && label_text != "1"))
        fail("{}: line {}: label '{}' must be 0 (QCD) or 1 (top)", path, number, label_text);
      p.label.push_back(label_text == "1" ? 1 : 0);
    }
  }
  return p;
}

}  // namespace

Predictions read_predictions(const std::string& path) {
  if (is_csv(path)) return read_csv(path);
  H5Id f = h5_open(path);
  if (!h5_exists(f.get(), "score")) fail("{}: not a predictions file (no dataset /score)", path);
  Predictions p;
  Tensor score = h5_read_tensor(f.get(), "score", path);
  if (score.rank() != 1) fail("{}: /score must be one-dimensional, found shape {}", path, score.shape().str());
  p.score.assign(score.data(), score.data() + score.numel());
  if (h5_exists(f.get(), "label")) {
    p.label = h5_read_int64(f.get(), "label", path);
    if (p.label.size() != p.score.size()) fail("{}: {} labels for {} scores", path, p.label.size(), p.score.size());
    for (size_t i = 0; i < p.label.size(); ++i)
      if (p.label[i] != 0 && p.label[i] != 1) fail("{}: label {} at row {} must be 0 or 1", path, p.label[i], i);
  }
  return p;
}

void write_predictions(const std::string& path, const Predictions& p) {
  if (p.has_labels() && p.label.size() != p.score.size())
    fail("{}: {} labels for {} scores", path, p.label.size(), p.score.size());
  if (is_csv(path)) {
    std::string text = p.has_labels() ? "score,label\n" : "score\n";
    char buffer[32];
    for (size_t i = 0; i < p.score.size(); ++i) {
      std::snprintf(buffer, sizeof(buffer), "%.9g", static_cast<double>(p.score[i]));
      text += buffer;
      if (p.has_labels()) text += ',' + std::to_string(p.label[i]);
      text += '\n';
    }
    write_text_atomically(path, text);
    return;
  }
  AtomicH5File out(path);
  h5_write_tensor(out.id(), "score", Tensor::from({p.size()}, p.score));
  if (p.has_labels()) h5_write_int64(out.id(), "label", p.label);
  out.commit();
}

}  // namespace toptag
