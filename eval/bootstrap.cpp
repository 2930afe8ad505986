#include "eval/bootstrap.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "eval/metrics.h"
#include "nn/check.h"
#include "nn/random.h"

namespace toptag {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Sample standard deviation; infinite when a value is.
double stddev_of(const std::vector<double>& v) {
  if (v.size() < 2) return 0.0;
  double sum = 0;
  for (double x : v) {
    if (!std::isfinite(x)) return kInf;
    sum += x;
  }
  const double mean = sum / static_cast<double>(v.size());
  double s = 0;
  for (double x : v) s += (x - mean) * (x - mean);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

// a - b where inf - inf (both reject every QCD jet) is no difference.
double minus(double a, double b) {
  return a == b ? 0.0 : a - b;
}

}  // namespace

double percentile(std::vector<double> values, double p) {
  if (values.empty()) fail("percentile of no values");
  std::sort(values.begin(), values.end());
  const double h = p * static_cast<double>(values.size() - 1);
  const size_t i = static_cast<size_t>(std::floor(h));
  const double f = h - static_cast<double>(i);
  if (f == 0.0 || i + 1 >= values.size()) return values[i];
  const double lo = values[i], hi = values[i + 1];
  if (lo == hi) return lo;
  if (std::isinf(lo) || std::isinf(hi)) return f < 0.5 ? lo : hi;
  return lo + f * (hi - lo);
}

Uncertainty summarize(double value, const std::vector<double>& replicates) {
  Uncertainty u;
  u.value = value;
  if (replicates.empty()) {
    u.ci68 = u.ci95 = {value, value};
    return u;
  }
  u.std = stddev_of(replicates);
  u.ci68 = {percentile(replicates, 0.16), percentile(replicates, 0.84)};
  u.ci95 = {percentile(replicates, 0.025), percentile(replicates, 0.975)};
  return u;
}

Resampler::Resampler(std::span<const int64_t> labels, uint64_t seed) : seed_(seed) {
  for (size_t i = 0; i < labels.size(); ++i) (labels[i] == 1 ? top_ : qcd_).push_back(i);
}

std::vector<size_t> Resampler::draw(int replicate) const {
  Rng rng = Rng(seed_).fork(static_cast<uint64_t>(replicate));
  std::vector<size_t> out;
  out.reserve(top_.size() + qcd_.size());
  for (const std::vector<size_t>* cls : {&top_, &qcd_})
    for (size_t k = 0; k < cls->size(); ++k) out.push_back((*cls)[rng.below(cls->size())]);
  return out;
}

Replicates bootstrap_metrics(const Predictions& p, const std::vector<double>& eps_s_points, int resamples,
                             uint64_t seed) {
  check_predictions(p.score, p.label);
  const Resampler resampler(p.label, seed);
  Replicates r;
  r.rejection.resize(eps_s_points.size());
  std::vector<float> s(p.score.size());
  std::vector<int64_t> l(p.label.size());
  for (int b = 0; b < resamples; ++b) {
    const std::vector<size_t> idx = resampler.draw(b);
    for (size_t i = 0; i < idx.size(); ++i) {
      s[i] = p.score[idx[i]];
      l[i] = p.label[idx[i]];
    }
    r.accuracy.push_back(accuracy(s, l));
    r.auc.push_back(auc(s, l));
    const std::vector<RocPoint> roc = roc_curve(s, l);
    for (size_t k = 0; k < eps_s_points.size(); ++k) r.rejection[k].push_back(rejection_at(roc, eps_s_points[k]));
  }
  return r;
}

bool same_labels(const Predictions& a, const Predictions& b) {
  return a.has_labels() && a.label == b.label;
}

Difference difference(double model_value, const std::vector<double>& model, double reference_value,
                      const std::vector<double>& reference, bool paired) {
  if (model.size() != reference.size())
    fail("{} and {} resamples: a difference needs as many of each", model.size(), reference.size());
  const size_t n = model.size();
  std::vector<double> d(n);
  for (size_t b = 0; b < n; ++b) d[b] = minus(model[b], reference[paired ? b : (b + 1) % n]);
  const Uncertainty u = summarize(minus(model_value, reference_value), d);
  return {u.value, u.ci68, u.ci95};
}

}  // namespace toptag
