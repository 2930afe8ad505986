#include "eval/report.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "eval/plot.h"
#include "io/files.h"
#include "nn/check.h"
#include "nn/random.h"

namespace toptag {

namespace {

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

double stddev_of(const std::vector<double>& v) {
  const double m = mean_of(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(std::max<size_t>(1, v.size() - 1)));
}

std::string eps_key(double eps) {
  return fmt::format("{:g}", eps);
}

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
    // Resample jets with replacement; a resample that lost a class is drawn again.
    Rng rng(seed);
    std::vector<double> accs, aucs;
    std::vector<std::vector<double>> rejs(eps_points.size());
    std::vector<float> s(p.score.size());
    std::vector<int64_t> l(p.label.size());
    for (int b = 0; b < bootstrap; ++b) {
      int64_t sig = 0;
      for (size_t i = 0; i < s.size(); ++i) {
        const size_t j = rng.below(s.size());
        s[i] = p.score[j], l[i] = p.label[j], sig += l[i];
      }
      if (sig == 0 || sig == static_cast<int64_t>(l.size())) {
        --b;
        continue;
      }
      accs.push_back(accuracy(s, l));
      aucs.push_back(auc(s, l));
      const std::vector<RocPoint> roc = roc_curve(s, l);
      for (size_t k = 0; k < eps_points.size(); ++k) {
        const double r = rejection_at(roc, eps_points[k]);
        if (std::isfinite(r)) rejs[k].push_back(r);
      }
    }
    Spread spread{stddev_of(accs), stddev_of(aucs), {}};
    for (const auto& r : rejs) spread.rejection.push_back(r.size() > 1 ? stddev_of(r) : NAN);
    m.spread = spread;
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

std::string eval_json(const std::vector<ModelEval>& models) {
  nlohmann::ordered_json out;
  out["models"] = nlohmann::ordered_json::array();
  for (const ModelEval& m : models) {
    nlohmann::ordered_json rej = nlohmann::ordered_json::object();
    for (const auto& [eps, r] : m.rejection) rej[eps_key(eps)] = std::isfinite(r) ? nlohmann::ordered_json(r) : nullptr;
    out["models"].push_back({{"name", m.name},
                             {"n_signal", m.n_signal},
                             {"n_background", m.n_background},
                             {"accuracy", m.accuracy},
                             {"auc", m.auc},
                             {"rejection", rej}});
  }
  return out.dump(2) + "\n";
}

std::string eval_table(const std::vector<ModelEval>& models) {
  size_t width = 5;
  for (const ModelEval& m : models) width = std::max(width, m.name.size());
  std::string header =
      fmt::format("{:<{}}  {:>8}  {:>8}  {:>9}  {:>8}", "model", width, "top", "QCD", "accuracy", "AUC");
  if (!models.empty())
    for (const auto& [eps, r] : models.front().rejection)
      header += fmt::format("  {:>16}", fmt::format("1/eps_B@{:g}", eps));
  std::string out = header + "\n";
  for (const ModelEval& m : models) {
    std::string line = fmt::format("{:<{}}  {:>8}  {:>8}  {:>9.4f}  {:>8.4f}", m.name, width, m.n_signal,
                                   m.n_background, m.accuracy, m.auc);
    for (const auto& [eps, r] : m.rejection) line += fmt::format("  {:>16.1f}", r);
    out += line + "\n";
    if (m.spread) {
      std::string s = fmt::format("{:<{}}  {:>8}  {:>8}  {:>9.4f}  {:>8.4f}", "  +-", width, "", "", m.spread->accuracy,
                                  m.spread->auc);
      for (double r : m.spread->rejection) s += fmt::format("  {:>16.1f}", r);
      out += s + "\n";
    }
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
