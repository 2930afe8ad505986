#include "eval/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "nn/check.h"

namespace toptag {

namespace {

// Indices sorted by decreasing score.
std::vector<size_t> by_decreasing_score(std::span<const float> scores) {
  std::vector<size_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] > scores[b]; });
  return order;
}

void count_classes(std::span<const int64_t> labels, int64_t& n_signal, int64_t& n_background) {
  n_signal = n_background = 0;
  for (int64_t l : labels) (l == 1 ? n_signal : n_background)++;
}

}  // namespace

void check_predictions(std::span<const float> scores, std::span<const int64_t> labels) {
  if (scores.size() != labels.size()) fail("{} scores but {} labels", scores.size(), labels.size());
  if (scores.empty()) fail("no predictions");
  int64_t signal = 0, background = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] != 0 && labels[i] != 1) fail("label {} at row {}: labels must be 0 (QCD) or 1 (top)", labels[i], i);
    if (std::isnan(scores[i])) fail("score at row {} is NaN", i);
  }
  count_classes(labels, signal, background);
  if (signal == 0 || background == 0)
    fail("only one class present ({} top, {} QCD jets): ROC metrics need both", signal, background);
}

double accuracy(std::span<const float> scores, std::span<const int64_t> labels, double cut) {
  int64_t correct = 0;
  for (size_t i = 0; i < scores.size(); ++i) correct += (scores[i] > cut) == (labels[i] == 1);
  return static_cast<double>(correct) / static_cast<double>(scores.size());
}

double auc(std::span<const float> scores, std::span<const int64_t> labels) {
  check_predictions(scores, labels);
  int64_t n_signal, n_background;
  count_classes(labels, n_signal, n_background);
  const std::vector<size_t> order = by_decreasing_score(scores);
  // Walk groups of equal score from the top: each background jet beats no signal above it, loses to
  // every signal jet with a higher score, and ties with the signal jets of its own group.
  double pairs = 0;
  int64_t signal_above = 0;
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    int64_t s = 0, b = 0;
    while (j < order.size() && scores[order[j]] == scores[order[i]]) (labels[order[j]] == 1 ? s : b)++, ++j;
    pairs += static_cast<double>(b) * (static_cast<double>(signal_above) + 0.5 * static_cast<double>(s));
    signal_above += s;
    i = j;
  }
  return pairs / (static_cast<double>(n_signal) * static_cast<double>(n_background));
}

std::vector<RocPoint> roc_curve(std::span<const float> scores, std::span<const int64_t> labels) {
  check_predictions(scores, labels);
  int64_t n_signal, n_background;
  count_classes(labels, n_signal, n_background);
  const std::vector<size_t> order = by_decreasing_score(scores);
  std::vector<RocPoint> roc{{std::numeric_limits<double>::infinity(), 0.0, 0.0}};
  int64_t s = 0, b = 0;
  for (size_t i = 0; i < order.size();) {
    const float t = scores[order[i]];
    while (i < order.size() && scores[order[i]] == t) (labels[order[i]] == 1 ? s : b)++, ++i;
    roc.push_back({t, static_cast<double>(s) / static_cast<double>(n_signal),
                   static_cast<double>(b) / static_cast<double>(n_background)});
  }
  return roc;
}

double background_efficiency_at(const std::vector<RocPoint>& roc, double eps_s) {
  if (!(eps_s >= 0.0 && eps_s <= 1.0)) fail("signal efficiency {} is not in [0, 1]", eps_s);
  // First point at or beyond the target; interpolate from the one before it.
  auto it = std::lower_bound(roc.begin(), roc.end(), eps_s, [](const RocPoint& p, double v) { return p.eps_s < v; });
  if (it == roc.end()) return roc.back().eps_b;
  if (it == roc.begin() || it->eps_s == eps_s) return it->eps_b;
  const RocPoint& lo = *(it - 1);
  const RocPoint& hi = *it;
  const double f = (eps_s - lo.eps_s) / (hi.eps_s - lo.eps_s);
  return lo.eps_b + f * (hi.eps_b - lo.eps_b);
}

double rejection_at(const std::vector<RocPoint>& roc, double eps_s) {
  const double eps_b = background_efficiency_at(roc, eps_s);
  return eps_b > 0 ? 1.0 / eps_b : std::numeric_limits<double>::infinity();
}

}  // namespace toptag
