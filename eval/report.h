// toptag eval's results: the paper's numbers per prediction set, comparisons against a reference
// set, bootstrap intervals and paired differences, the JSON summary, ROC points as CSV, and the ROC plot.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "eval/bootstrap.h"
#include "eval/metrics.h"
#include "eval/predictions.h"

namespace toptag {

// Bootstrap intervals of one set's metrics, and the per-resample values they come from.
struct ModelUncertainty {
  int resamples = 0;
  uint64_t seed = 1;
  Uncertainty accuracy, auc;
  std::vector<Uncertainty> rejection;  // same order as ModelEval::rejection
  Replicates replicates;
};

struct ModelEval {
  std::string name;
  int64_t n_signal = 0, n_background = 0;
  double accuracy = 0, auc = 0;
  std::vector<std::pair<double, double>> rejection;  // (eps_S, 1/eps_B)
  std::optional<ModelUncertainty> uncertainty;       // with bootstrap > 0
  std::vector<RocPoint> roc;
};

// Throws (naming `name`) on bad predictions: no labels, NaN, one class only.
ModelEval evaluate(const std::string& name, const Predictions& p, const std::vector<double>& eps_s_points,
                   int bootstrap = 0, uint64_t seed = 1);

// How a prediction set differs from a reference set on the same jets.
struct Comparison {
  double max_abs_diff = 0, mean_abs_diff = 0, flip_fraction = 0, auc_diff = 0;
};
Comparison compare(const Predictions& p, const Predictions& reference, const std::string& name);

// A model against a reference model (both evaluated with the same resamples and seed), from the
// bootstrap: paired when they hold the same jets in the same order.
struct BootstrapComparison {
  std::string model, reference;
  bool paired = false;
  Difference accuracy, auc;
  std::vector<std::pair<double, Difference>> rejection;  // (eps_S, 1/eps_B difference)
  bool distinguishable() const;                          // in any metric
};
// requires: both have uncertainty, from the same number of resamples.
BootstrapComparison compare_bootstrap(const ModelEval& model, const ModelEval& reference, bool paired);
// One sentence for a report, e.g. "ms-fp8 and float are not distinguishable at this test-set size:
// 1/eps_B(30%) differs by +57 [95%: -30, +160], ...".
std::string comparison_sentence(const BootstrapComparison& c);

// {"models": [{"name", "n_signal", "n_background", "accuracy", "auc", "rejection": {"0.3": x, ...},
//   "bootstrap": {...}}], "comparisons": [...]}; see the README. Infinite values inside "bootstrap"
// and "comparisons" are the strings "inf" and "-inf" (JSON has no infinity); "rejection" keeps null.
std::string eval_json(const std::vector<ModelEval>& models, const std::vector<BootstrapComparison>& comparisons = {});
// A fixed-width table for the terminal; with bootstrap, rows for the std and the 68% and 95% intervals
// under each model.
std::string eval_table(const std::vector<ModelEval>& models);

// `v` with `decimals` decimals ("inf", "-inf" when infinite); `sign` prints a + on positive values.
std::string format_value(double v, int decimals, bool sign = false);
// Decimals that show two significant digits of the interval's width (`fallback` when it has none:
// zero or infinite width), so that a value is printed no more precisely than it is known.
int decimals_for(const Interval& ci, int fallback);

// ROC points of one set: threshold,eps_s,eps_b,rejection.
void write_roc_csv(const std::string& path, const std::vector<RocPoint>& roc);
// x = eps_S, y = 1/eps_B on a log scale, one curve per set (the paper's Figure 1). The terminal
// (png, svg, pdf) follows the file's extension. Needs gnuplot on the PATH.
void plot_roc(const std::string& path, const std::vector<ModelEval>& models, const std::string& title = "");

}  // namespace toptag
