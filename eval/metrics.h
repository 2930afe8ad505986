// The paper's classification metrics for a tagger's scores (higher = more top-like):
//  - accuracy: fraction of jets with (score > 0.5) == (label == top);
//  - AUC: area under the ROC curve, exactly, counting tied (signal, background) score pairs as 1/2
//    (the Mann-Whitney statistic), in O(n log n);
//  - background rejection 1/eps_B at a signal efficiency eps_S, where eps_S is the fraction of top
//    jets and eps_B the fraction of QCD jets with score >= threshold. eps_B at the requested eps_S is
//    interpolated linearly (in eps_S) between the two neighbouring ROC points, i.e. between the two
//    thresholds whose signal efficiencies bracket the target.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace toptag {

struct RocPoint {
  double threshold;  // score >= threshold is called top
  double eps_s;      // signal efficiency (true-positive rate)
  double eps_b;      // background efficiency (false-positive rate, mistag rate)
};

// Throws toptag::Error naming the problem if sizes differ, a label is not 0/1, a score is NaN,
// or only one class is present.
void check_predictions(std::span<const float> scores, std::span<const int64_t> labels);

double accuracy(std::span<const float> scores, std::span<const int64_t> labels, double cut = 0.5);
double auc(std::span<const float> scores, std::span<const int64_t> labels);

// ROC points from the strictest threshold to the loosest, starting at (0, 0) and ending at (1, 1),
// one point per distinct score.
std::vector<RocPoint> roc_curve(std::span<const float> scores, std::span<const int64_t> labels);

// eps_B at signal efficiency `eps_s` by linear interpolation on the ROC curve.
double background_efficiency_at(const std::vector<RocPoint>& roc, double eps_s);
// 1 / eps_B at `eps_s` (infinity if no background passes).
double rejection_at(const std::vector<RocPoint>& roc, double eps_s);

}  // namespace toptag
