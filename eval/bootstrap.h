// Bootstrap uncertainties of the paper's metrics: percentile intervals (Efron & Tibshirani 1993,
// ch. 13) from resamples of the test jets, and paired differences between two taggers.
//
// A resample draws, with replacement, as many top jets from the top jets and as many QCD jets from
// the QCD jets as the set holds: stratified by class. eps_S and eps_B then keep their denominators
// (1/eps_B at eps_S = 30% is always the same cut on the same number of top jets), no resample loses a
// class, and what moves is only which jets the test set happened to hold.
//
// Resample b is drawn from Rng(seed).fork(b) alone, so the same seed gives the same intervals
// whatever the thread count or the order of the sets, and two prediction sets of the same jets (equal
// labels in the same order) are resampled identically: their replicates are paired.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "eval/predictions.h"

namespace toptag {

struct Interval {
  double lo = 0, hi = 0;
  bool contains(double v) const { return lo <= v && v <= hi; }
};

// One metric on the full set and over its resamples. 1/eps_B is infinite in a resample where no QCD
// jet passes the cut; such values are kept (see percentile), and make `std` infinite.
struct Uncertainty {
  double value = 0;
  double std = 0;
  Interval ci68, ci95;  // 16th-84th and 2.5th-97.5th percentiles
};

// Percentile p in [0, 1] by linear interpolation between order statistics (Hyndman and Fan's type 7).
// Where one of the two neighbours is infinite, the nearer one is taken (an interpolation with
// infinity means nothing). requires: values non-empty, no NaN.
double percentile(std::vector<double> values, double p);
Uncertainty summarize(double value, const std::vector<double>& replicates);

// The stratified resamples of one labelled set of jets.
class Resampler {
 public:
  Resampler(std::span<const int64_t> labels, uint64_t seed);
  // Jet indices of resample `replicate` (as many as there are jets).
  std::vector<size_t> draw(int replicate) const;

 private:
  std::vector<size_t> top_, qcd_;
  uint64_t seed_;
};

// One prediction set's metrics on each resample.
struct Replicates {
  std::vector<double> accuracy, auc;
  std::vector<std::vector<double>> rejection;  // [eps_S point][resample]
};
Replicates bootstrap_metrics(const Predictions& p, const std::vector<double>& eps_s_points, int resamples,
                             uint64_t seed);

// True when `a` and `b` hold the same jets in the same order, as far as the labels tell: only then is
// a paired comparison valid.
bool same_labels(const Predictions& a, const Predictions& b);

// model - reference, with intervals from the per-resample differences. inf - inf (neither lets a QCD
// jet through) counts as no difference.
struct Difference {
  double value = 0;
  Interval ci68, ci95;
  // The 95% interval excludes 0.
  bool distinguishable() const { return !ci95.contains(0.0); }
};
// Paired: resample b of one against resample b of the other (the same jets). Unpaired: resample b
// against the reference's resample b + 1, an independent draw.
Difference difference(double model_value, const std::vector<double>& model, double reference_value,
                      const std::vector<double>& reference, bool paired);

}  // namespace toptag
