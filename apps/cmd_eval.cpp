// toptag eval: accuracy, AUC, background rejection and ROC curves for any prediction files.
#include <fmt/format.h>

#include <filesystem>
#include <fstream>

#include "apps/commands.h"
#include "eval/report.h"
#include "io/files.h"
#include "nn/check.h"

namespace toptag::apps {

namespace {

struct EvalArgs {
  std::vector<std::string> predictions, names;
  std::string json, plot, roc_csv, reference, title;
  std::vector<double> at = {0.3, 0.5};
  int bootstrap = 0;
  uint64_t seed = 1;
};

std::string default_name(const std::string& path) {
  return std::filesystem::path(path).stem().string();
}

void run_eval(const EvalArgs& a) {
  if (!a.names.empty() && a.names.size() != a.predictions.size())
    fail("--names has {} names for {} prediction files", a.names.size(), a.predictions.size());
  std::vector<std::string> names, roc_files;
  for (size_t i = 0; i < a.predictions.size(); ++i) {
    names.push_back(a.names.empty() ? default_name(a.predictions[i]) : a.names[i]);
    roc_files.push_back(names.back() + ".csv");
  }
  FileUse use;
  for (const std::string& p : a.predictions) use.reads("--predictions", p);
  use.reads("--reference", a.reference).writes("--json", a.json).writes("--plot", a.plot);
  use.writes_in("--roc-csv", a.roc_csv, roc_files).check();
  for (double eps : a.at)
    if (!(eps > 0 && eps <= 1)) fail("--at {}: signal efficiencies must be in (0, 1]", eps);
  // Read and evaluate everything before writing anything: bad input overwrites nothing.
  std::vector<Predictions> sets;
  std::vector<ModelEval> models;
  for (size_t i = 0; i < a.predictions.size(); ++i) {
    sets.push_back(read_predictions(a.predictions[i]));
    const std::string& name = names[i];
    if (!a.roc_csv.empty() &&
        (name.empty() || name.find_first_of("/\\") != std::string::npos || name == "." || name == ".."))
      fail("--names '{}' cannot name a file in --roc-csv {} (no slashes, not empty)", name, a.roc_csv);
    try {
      models.push_back(evaluate(name, sets.back(), a.at, a.bootstrap, a.seed));
    } catch (const Error& e) {
      fail("{}: {}", a.predictions[i], e.what());
    }
  }
  // With --bootstrap, every set against the first: paired when they hold the same jets in the same order.
  std::vector<BootstrapComparison> differences;
  if (a.bootstrap > 0)
    for (size_t i = 1; i < sets.size(); ++i)
      differences.push_back(compare_bootstrap(models[i], models[0], same_labels(sets[i], sets[0])));
  std::vector<std::pair<std::string, Comparison>> comparisons;
  if (!a.reference.empty()) {
    const Predictions ref = read_predictions(a.reference);
    for (size_t i = 0; i < sets.size(); ++i)
      comparisons.emplace_back(models[i].name, compare(sets[i], ref, a.predictions[i]));
  }

  fmt::print("{}", eval_table(models));
  if (a.bootstrap > 0) fmt::print("(bootstrap: {} stratified resamples of the jets, seed {})\n", a.bootstrap, a.seed);
  if (!differences.empty()) fmt::print("\n");
  for (const BootstrapComparison& c : differences) fmt::print("{}\n", comparison_sentence(c));
  if (!comparisons.empty()) {
    fmt::print("\ncompared with {}:\n", a.reference);
    fmt::print("{:<24}  {:>12}  {:>12}  {:>10}  {:>10}\n", "model", "max |diff|", "mean |diff|", "flipped", "AUC diff");
    for (const auto& [name, c] : comparisons)
      fmt::print("{:<24}  {:>12.3g}  {:>12.3g}  {:>9.4f}%  {:>+10.5f}\n", name, c.max_abs_diff, c.mean_abs_diff,
                 100 * c.flip_fraction, c.auc_diff);
  }
  if (!a.json.empty()) write_text_atomically(a.json, eval_json(models, differences));
  if (!a.roc_csv.empty()) {
    std::filesystem::create_directories(a.roc_csv);
    for (const ModelEval& m : models)
      write_roc_csv((std::filesystem::path(a.roc_csv) / (m.name + ".csv")).string(), m.roc);
  }
  if (!a.plot.empty()) plot_roc(a.plot, models, a.title);
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand("eval", "Accuracy, AUC, background rejection and ROC curves of prediction files");
  cmd->add_option("--predictions,-p", a->predictions, "prediction files (.h5 or .csv), one per model")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--names", a->names, "a name per file (default: the file names)")->delimiter(',');
  cmd->add_option("--at", a->at, "signal efficiencies for 1/eps_B (default 0.3,0.5)")
      ->delimiter(',')
      ->check(in_range(1e-6, 1));
  cmd->add_option("--json", a->json, "write the summary as JSON");
  cmd->add_option("--plot", a->plot, "draw the ROC curves (.png, .svg or .pdf)");
  cmd->add_option("--title", a->title, "plot title");
  cmd->add_option("--roc-csv", a->roc_csv, "directory for each set's ROC points as CSV");
  cmd->add_option("--reference", a->reference, "compare every set with this one (same jets)")->check(CLI::ExistingFile);
  cmd->add_option("--bootstrap", a->bootstrap,
                  "bootstrap resamples: std, 68% and 95% intervals, and each set against the first (0: none)")
      ->default_val(0)
      ->check(in_range(0, 1e6));
  cmd->add_option("--seed", a->seed, "bootstrap seed")->default_val(1);
  cmd->callback([a] { run_eval(*a); });
}

}  // namespace toptag::apps
