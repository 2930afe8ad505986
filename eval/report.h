// toptag eval's results: the paper's numbers per prediction set, comparisons against a reference
// set, bootstrap uncertainties, the JSON summary, ROC points as CSV, and the ROC plot.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "eval/metrics.h"
#include "eval/predictions.h"

namespace toptag {

struct Spread {  // bootstrap standard deviations
  double accuracy = 0, auc = 0;
  std::vector<double> rejection;  // same order as ModelEval::rejection
};

struct ModelEval {
  std::string name;
  int64_t n_signal = 0, n_background = 0;
  double accuracy = 0, auc = 0;
  std::vector<std::pair<double, double>> rejection;  // (eps_S, 1/eps_B)
  std::optional<Spread> spread;
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

// {"models": [{"name", "n_signal", "n_background", "accuracy", "auc", "rejection": {"0.3": x, ...}}]}
std::string eval_json(const std::vector<ModelEval>& models);
// A fixed-width table for the terminal.
std::string eval_table(const std::vector<ModelEval>& models);

// ROC points of one set: threshold,eps_s,eps_b,rejection.
void write_roc_csv(const std::string& path, const std::vector<RocPoint>& roc);
// x = eps_S, y = 1/eps_B on a log scale, one curve per set (the paper's Figure 1). The terminal
// (png, svg, pdf) follows the file's extension. Needs gnuplot on the PATH.
void plot_roc(const std::string& path, const std::vector<ModelEval>& models, const std::string& title = "");

}  // namespace toptag
