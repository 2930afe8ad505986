#include "eval/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "eval/plot.h"
#include "io/files.h"
#include "nn/check.h"

namespace toptag {

namespace {

std::string eps_key(double eps) {
  return fmt::format("{:g}", eps);
}

using ojson = nlohmann::ordered_json;

// JSON has no infinity: infinite values are written as the strings "inf" and "-inf".
ojson number(double v) {
  if (std::isfinite(v)) return v;
  return v > 0 ? "inf" : "-inf";
}

ojson interval_json(const Interval& ci) {
  return ojson::array({number(ci.lo), number(ci.hi)});
}

ojson uncertainty_json(const Uncertainty& u) {
  return {{"value", number(u.value)},
          {"std", number(u.std)},
          {"ci68", interval_json(u.ci68)},
          {"ci95", interval_json(u.ci95)}};
}

ojson difference_json(const Difference& d) {
  return {{"difference", number(d.value)},
          {"ci68", interval_json(d.ci68)},
          {"ci95", interval_json(d.ci95)},
          {"distinguishable", d.distinguishable()}};
}

ojson bootstrap_json(const ModelUncertainty& u, const std::vector<std::pair<double, double>>& rejection) {
  ojson rej = ojson::object();
  for (size_t k = 0; k < rejection.size(); ++k) rej[eps_key(rejection[k].first)] = uncertainty_json(u.rejection[k]);
  return {{"resamples", u.resamples},
          {"seed", u.seed},
          {"stratified", true},
          {"accuracy", uncertainty_json(u.accuracy)},
          {"auc", uncertainty_json(u.auc)},
          {"rejection", rej}};
}

ojson comparison_json(const BootstrapComparison& c) {
  ojson rej = ojson::object();
  for (const auto& [eps, d] : c.rejection) rej[eps_key(eps)] = difference_json(d);
  return {{"model", c.model},
          {"reference", c.reference},
          {"paired", c.paired},
          {"accuracy", difference_json(c.accuracy)},
          {"auc", difference_json(c.auc)},
          {"rejection", rej},
          {"distinguishable", c.distinguishable()},
          {"summary", comparison_sentence(c)}};
}

// "+57 [95%: -30, +160]", rounded to the interval's precision.
std::string difference_text(const Difference& d, int fallback_decimals) {
  const int decimals = decimals_for(d.ci95, fallback_decimals);
  return fmt::format("{} [95%: {}, {}]", format_value(d.value, decimals, true), format_value(d.ci95.lo, decimals, true),
                     format_value(d.ci95.hi, decimals, true));
}

std::string interval_text(const Interval& ci, int decimals) {
  return fmt::format("[{}, {}]", format_value(ci.lo, decimals), format_value(ci.hi, decimals));
}

constexpr int kRatioDecimals = 4;      // accuracy, AUC
constexpr int kRejectionDecimals = 1;  // 1/eps_B

}  // namespace

ModelEval evaluate(const std::string& name, const Predictions& p, const std::vector<double>& eps_points, int bootstrap,
                   uint64_t seed) {
  if (!p.has_labels()) fail("{}: predictions carry no labels, so there is nothing to evaluate against", name);
  try {
    check_predictions(p.score, p.label);
  } catch (const Error& e) {
    fail("{}: {}", name, e.what());
  }
  ModelEval m;
  m.name = name;
  for (int64_t l : p.label) (l ? m.n_signal : m.n_background)++;
  m.accuracy = accuracy(p.score, p.label);
  m.auc = auc(p.score, p.label);
  m.roc = roc_curve(p.score, p.label);
  for (double eps : eps_points) m.rejection.emplace_back(eps, rejection_at(m.roc, eps));
  if (bootstrap > 0) {
    ModelUncertainty u;
    u.resamples = bootstrap;
    u.seed = seed;
    u.replicates = bootstrap_metrics(p, eps_points, bootstrap, seed);
    u.accuracy = summarize(m.accuracy, u.replicates.accuracy);
    u.auc = summarize(m.auc, u.replicates.auc);
    for (size_t k = 0; k < eps_points.size(); ++k)
      u.rejection.push_back(summarize(m.rejection[k].second, u.replicates.rejection[k]));
    m.uncertainty = std::move(u);
  }
  return m;
}

Comparison compare(const Predictions& p, const Predictions& ref, const std::string& name) {
  if (p.size() != ref.size())
    fail("{}: {} predictions but the reference has {}: they must be made on the same jets", name, p.size(), ref.size());
  Comparison c;
  double sum = 0;
  int64_t flips = 0;
  for (int64_t i = 0; i < p.size(); ++i) {
    const double d = std::fabs(static_cast<double>(p.score[i]) - ref.score[i]);
    c.max_abs_diff = std::max(c.max_abs_diff, d);
    sum += d;
    flips += (p.score[i] > 0.5f) != (ref.score[i] > 0.5f);
  }
  c.mean_abs_diff = sum / static_cast<double>(std::max<int64_t>(1, p.size()));
  c.flip_fraction = static_cast<double>(flips) / static_cast<double>(std::max<int64_t>(1, p.size()));
  if (p.has_labels() && ref.has_labels()) c.auc_diff = auc(p.score, p.label) - auc(ref.score, ref.label);
  return c;
}

bool BootstrapComparison::distinguishable() const {
  bool any = accuracy.distinguishable() || auc.distinguishable();
  for (const auto& [eps, d] : rejection) any = any || d.distinguishable();
  return any;
}

BootstrapComparison compare_bootstrap(const ModelEval& model, const ModelEval& reference, bool paired) {
  if (!model.uncertainty || !reference.uncertainty)
    fail("{} against {}: a bootstrap comparison needs both evaluated with --bootstrap", model.name, reference.name);
  if (model.rejection.size() != reference.rejection.size())
    fail("{} against {}: 1/eps_B at different signal efficiencies", model.name, reference.name);
  const ModelUncertainty &m = *model.uncertainty, &r = *reference.uncertainty;
  BootstrapComparison c;
  c.model = model.name;
  c.reference = reference.name;
  c.paired = paired;
  c.accuracy = difference(model.accuracy, m.replicates.accuracy, reference.accuracy, r.replicates.accuracy, paired);
  c.auc = difference(model.auc, m.replicates.auc, reference.auc, r.replicates.auc, paired);
  for (size_t k = 0; k < model.rejection.size(); ++k)
    c.rejection.emplace_back(model.rejection[k].first,
                             difference(model.rejection[k].second, m.replicates.rejection[k],
                                        reference.rejection[k].second, r.replicates.rejection[k], paired));
  return c;
}

std::string comparison_sentence(const BootstrapComparison& c) {
  std::vector<std::pair<std::string, const Difference*>> metrics;
  for (const auto& [eps, d] : c.rejection) metrics.emplace_back(fmt::format("1/eps_B({:g}%)", 100 * eps), &d);
  metrics.emplace_back("AUC", &c.auc);
  metrics.emplace_back("accuracy", &c.accuracy);
  std::string which, figures;
  for (size_t i = 0; i < metrics.size(); ++i) {
    const auto& [label, d] = metrics[i];
    if (d->distinguishable()) which += (which.empty() ? "" : ", ") + label;
    const int decimals = label.starts_with("1/eps_B") ? kRejectionDecimals : kRatioDecimals;
    figures += fmt::format("{}{}{} {}", i ? ", " : "", label, i ? " by" : " differs by", difference_text(*d, decimals));
  }
  const std::string how = c.paired ? "paired bootstrap" : "unpaired bootstrap: the sets hold different jets";
  if (which.empty())
    return fmt::format("{} and {} are not distinguishable at this test-set size: {} ({}).", c.model, c.reference,
                       figures, how);
  return fmt::format("{} and {} differ in {}: {} ({}).", c.model, c.reference, which, figures, how);
}

std::string format_value(double v, int decimals, bool sign) {
  if (std::isinf(v)) return v > 0 ? (sign ? "+inf" : "inf") : "-inf";
  return sign ? fmt::format("{:+.{}f}", v, decimals) : fmt::format("{:.{}f}", v, decimals);
}

int decimals_for(const Interval& ci, int fallback) {
  const double width = ci.hi - ci.lo;
  if (!(width > 0) || !std::isfinite(width)) return fallback;
  return std::clamp(1 - static_cast<int>(std::floor(std::log10(width))), 0, 6);
}

std::string eval_json(const std::vector<ModelEval>& models, const std::vector<BootstrapComparison>& comparisons) {
  ojson out;
  out["models"] = ojson::array();
  for (const ModelEval& m : models) {
    ojson rej = ojson::object();
    for (const auto& [eps, r] : m.rejection) rej[eps_key(eps)] = std::isfinite(r) ? ojson(r) : nullptr;
    ojson model = {{"name", m.name},         {"n_signal", m.n_signal}, {"n_background", m.n_background},
                   {"accuracy", m.accuracy}, {"auc", m.auc},           {"rejection", rej}};
    if (m.uncertainty) model["bootstrap"] = bootstrap_json(*m.uncertainty, m.rejection);
    out["models"].push_back(model);
  }
  if (!comparisons.empty()) {
    out["comparisons"] = ojson::array();
    for (const BootstrapComparison& c : comparisons) out["comparisons"].push_back(comparison_json(c));
  }
  return out.dump(2) + "\n";
}

std::string eval_table(const std::vector<ModelEval>& models) {
  bool intervals = false;
  size_t width = 5;
  for (const ModelEval& m : models) {
    width = std::max(width, m.name.size());
    intervals = intervals || m.uncertainty.has_value();
  }
  // Intervals such as [0.9012, 0.9113] need wider columns than the values alone.
  const size_t ratio_w = intervals ? 18 : 9, rej_w = intervals ? 18 : 16;
  std::string out = fmt::format("{:<{}}  {:>8}  {:>8}  {:>{}}  {:>{}}", "model", width, "top", "QCD", "accuracy",
                                ratio_w, "AUC", ratio_w);
  if (!models.empty())
    for (const auto& [eps, r] : models.front().rejection)
      out += fmt::format("  {:>{}}", fmt::format("1/eps_B@{:g}", eps), rej_w);
  out += "\n";
  for (const ModelEval& m : models) {
    out += fmt::format("{:<{}}  {:>8}  {:>8}  {:>{}.4f}  {:>{}.4f}", m.name, width, m.n_signal, m.n_background,
                       m.accuracy, ratio_w, m.auc, ratio_w);
    for (const auto& [eps, r] : m.rejection) out += fmt::format("  {:>{}.1f}", r, rej_w);
    out += "\n";
    if (!m.uncertainty) continue;
    const ModelUncertainty& u = *m.uncertainty;
    auto row = [&](const char* label, auto cell) {
      std::string line = fmt::format("{:<{}}  {:>8}  {:>8}  {:>{}}  {:>{}}", label, width, "", "",
                                     cell(u.accuracy, kRatioDecimals), ratio_w, cell(u.auc, kRatioDecimals), ratio_w);
      for (const Uncertainty& r : u.rejection) line += fmt::format("  {:>{}}", cell(r, kRejectionDecimals), rej_w);
      out += line + "\n";
    };
    row("  +-", [](const Uncertainty& x, int d) { return format_value(x.std, d); });
    row("  68%", [](const Uncertainty& x, int d) { return interval_text(x.ci68, d); });
    row("  95%", [](const Uncertainty& x, int d) { return interval_text(x.ci95, d); });
  }
  return out;
}

void write_roc_csv(const std::string& path, const std::vector<RocPoint>& roc) {
  std::string text = "threshold,eps_s,eps_b,rejection\n";
  for (const RocPoint& p : roc)
    text += fmt::format("{:.9g},{:.9g},{:.9g},{:.9g}\n", p.threshold, p.eps_s, p.eps_b,
                        p.eps_b > 0 ? 1.0 / p.eps_b : INFINITY);
  write_text_atomically(path, text);
}

void plot_roc(const std::string& path, const std::vector<ModelEval>& models, const std::string& title) {
  std::string script =
      "set logscale y\nset grid\nset key top right\nset xrange [0:1]\n"
      "set xlabel 'signal efficiency {/Symbol e}_S (top)'\nset ylabel 'background rejection 1/{/Symbol e}_B (QCD)'\n";
  if (!title.empty()) script += "set title " + gnuplot_string(title) + "\n";
  script += "plot ";
  for (size_t i = 0; i < models.size(); ++i)
    script += fmt::format("{}'-' with lines linewidth 2 title {}", i ? ", " : "",
                          gnuplot_string(fmt::format("{} (AUC {:.4f})", models[i].name, models[i].auc)));
  script += "\n";
  for (const ModelEval& m : models) {
    // At most ~2000 points per curve: enough for a smooth line, small files.
    XY points;
    const size_t stride = std::max<size_t>(1, m.roc.size() / 2000);
    for (size_t k = 0; k < m.roc.size(); k += stride)
      if (m.roc[k].eps_b > 0 && m.roc[k].eps_s > 0) points.emplace_back(m.roc[k].eps_s, 1.0 / m.roc[k].eps_b);
    if (points.empty()) points.emplace_back(1.0, 1.0);
    script += gnuplot_data(points);
  }
  render_plot(path, 900, 700, script);
}

}  // namespace toptag
