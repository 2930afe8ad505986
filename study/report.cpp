#include "study/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <gnuplot-iostream.h>
#include <nlohmann/json.hpp>
#include <sstream>

#include "eval/predictions.h"
#include "eval/report.h"
#include "nn/check.h"
#include "nn/files.h"
#include "serve/perf.h"

namespace toptag {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

json read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) fail("{}: missing (rerun the study to make it)", path.string());
  json j = json::parse(in, nullptr, false);
  if (j.is_discarded()) fail("{}: not valid JSON", path.string());
  return j;
}

// A training run's metrics.csv as rows of named numbers (empty when the run has none).
json read_training_csv(const fs::path& path) {
  json rows = json::array();
  std::ifstream in(path);
  if (!in) return rows;
  std::string header, line;
  std::getline(in, header);
  std::vector<std::string> names;
  std::stringstream hs(header);
  for (std::string n; std::getline(hs, n, ',');) names.push_back(n);
  while (std::getline(in, line)) {
    std::stringstream ls(line);
    json row;
    size_t k = 0;
    for (std::string cell; std::getline(ls, cell, ',') && k < names.size(); ++k) row[names[k]] = std::stod(cell);
    if (k == names.size()) rows.push_back(row);
  }
  return rows;
}

// Loss (training and validation) and validation AUC per epoch of the float training run, with the
// fine-tuning epochs after it.
void plot_training(const fs::path& path, const json& float_run, const json& finetune_run) {
  if (float_run.empty()) fail("{}: the float training run has no epochs to plot", path.string());
  std::vector<std::pair<double, double>> train_loss, val_loss, auc, ft_loss, ft_auc;
  const double last_epoch = float_run.back().at("epoch").get<double>();
  for (const json& r : float_run) {
    train_loss.emplace_back(r["epoch"], r["train_loss"]);
    val_loss.emplace_back(r["epoch"], r["val_loss"]);
    auc.emplace_back(r["epoch"], r["val_auc"]);
  }
  for (const json& r : finetune_run) {
    ft_loss.emplace_back(last_epoch + r["epoch"].get<double>(), r["val_loss"]);
    ft_auc.emplace_back(last_epoch + r["epoch"].get<double>(), r["val_auc"]);
  }
  const std::string temp = path.string() + ".tmp.png";
  {
    Gnuplot gp("gnuplot");
    gp << "set terminal pngcairo size 1000,450 enhanced font 'sans,11'\nset output '" << temp << "'\n";
    gp << "set multiplot layout 1,2\nset grid\nset xlabel 'epoch'\nset key top right\n";
    gp << "set title 'loss'\nset ylabel 'cross-entropy'\n";
    gp << "plot '-' with linespoints lw 2 pt 7 title 'training', '-' with linespoints lw 2 pt 5 title 'validation'";
    if (!ft_loss.empty()) gp << ", '-' with linespoints lw 2 pt 9 title 'validation, quantized fine-tuning'";
    gp << "\n";
    gp.send1d(train_loss);
    gp.send1d(val_loss);
    if (!ft_loss.empty()) gp.send1d(ft_loss);
    gp << "set title 'validation AUC'\nset ylabel 'AUC'\nset key bottom right\n";
    gp << "plot '-' with linespoints lw 2 pt 7 title 'float'";
    if (!ft_auc.empty()) gp << ", '-' with linespoints lw 2 pt 9 title 'quantized fine-tuning'";
    gp << "\n";
    gp.send1d(auc);
    if (!ft_auc.empty()) gp.send1d(ft_auc);
    gp << "unset multiplot\n";
  }
  if (!fs::exists(temp) || fs::file_size(temp) == 0)
    fail("{}: gnuplot produced no plot (is gnuplot installed? Debian: gnuplot-nox)", path.string());
  fs::rename(temp, path);
}

json perf_rows(const std::vector<PerfPoint>& points) {
  json rows = json::array();
  for (const PerfPoint& p : points)
    rows.push_back({{"mode", p.mode}, {"concurrency", p.concurrency}, {"threads", p.threads}, {"batch", p.batch},
                    {"throughput", p.stats.throughput}, {"mean_ms", p.stats.mean_ms}, {"p50_ms", p.stats.p50_ms},
                    {"p90_ms", p.stats.p90_ms}, {"p95_ms", p.stats.p95_ms}, {"p99_ms", p.stats.p99_ms},
                    {"requests", p.stats.requests}, {"errors", p.stats.errors}});
  return rows;
}

const PerfPoint* find_local(const std::vector<PerfPoint>& points, int threads, int64_t batch) {
  for (const PerfPoint& p : points)
    if (p.mode == "local" && p.threads == threads && p.batch == batch) return &p;
  return nullptr;
}

std::string fixed(double v, int digits) { return fmt::format("{:.{}f}", v, digits); }

}  // namespace

void write_report(const ReportInputs& in) {
  const fs::path dir = in.dir, report = dir / "report";
  fs::create_directories(report);
  const StudyOptions& o = in.options;

  // Physics: toptag eval's own summary, and how the served scores differ from local ones.
  const json eval = read_json(report / "eval.json");
  const Predictions local = read_predictions((dir / "predictions/finetuned.h5").string());
  const Predictions served = read_predictions((dir / "predictions/served.h5").string());
  const Comparison diff = compare(served, local, "served");

  // Speed.
  const std::vector<PerfPoint> local_perf = read_perf_csv((dir / "perf/local.csv").string());
  const std::vector<PerfPoint> server_perf = read_perf_csv((dir / "perf/server.csv").string());
  if (local_perf.empty() || server_perf.empty()) fail("{}: no performance measurements", (dir / "perf").string());
  std::vector<PerfPoint> all = local_perf;
  all.insert(all.end(), server_perf.begin(), server_perf.end());
  plot_throughput((report / "throughput_vs_clients.png").string(), all,
                  "toptag serve, one jet per request, " + o.arch);

  // Training curves.
  const json float_run = read_training_csv(dir / "float/metrics.csv");
  const json finetune_run = read_training_csv(dir / "finetuned/metrics.csv");
  const json retune_run = read_training_csv(dir / "retuned/metrics.csv");
  plot_training(report / "training.png", float_run, finetune_run);

  const PerfPoint* best_local = &local_perf.front();
  for (const PerfPoint& p : local_perf)
    if (p.stats.throughput > best_local->stats.throughput) best_local = &p;
  const PerfPoint* best_server = &server_perf.front();
  const PerfPoint* one_client = &server_perf.front();
  const PerfPoint* sixteen = nullptr;
  for (const PerfPoint& p : server_perf) {
    if (p.stats.throughput > best_server->stats.throughput) best_server = &p;
    if (p.concurrency < one_client->concurrency) one_client = &p;
    if (p.concurrency == 16) sixteen = &p;
  }
  int max_threads = 1;
  for (const PerfPoint& p : local_perf) max_threads = std::max(max_threads, p.threads);
  const PerfPoint* b1 = find_local(local_perf, 1, 1);
  double best_b1_ms = 1e300;
  for (const PerfPoint& p : local_perf)
    if (p.batch == 1) best_b1_ms = std::min(best_b1_ms, p.stats.p50_ms);

  json stages = json::object();
  double total_seconds = 0;
  for (const auto& [name, seconds] : in.stage_seconds) stages[name] = seconds, total_seconds += seconds;
  json metrics = {
      {"models", eval.at("models")},
      {"served_vs_local",
       {{"reference", "fine-tuned (local)"},
        {"max_abs_diff", diff.max_abs_diff},
        {"mean_abs_diff", diff.mean_abs_diff},
        {"flip_fraction", diff.flip_fraction},
        {"auc_diff", diff.auc_diff}}},
      {"performance",
       {{"local", perf_rows(local_perf)},
        {"server", perf_rows(server_perf)},
        {"best_local_throughput", best_local->stats.throughput},
        {"best_server_throughput", best_server->stats.throughput},
        {"server_16_clients_over_best_local",
         sixteen ? json(sixteen->stats.throughput / best_local->stats.throughput) : json(nullptr)},
        {"server_1_client_p50_ms", one_client->stats.p50_ms},
        {"local_batch1_best_p50_ms", best_b1_ms}}},
      {"training", {{"float", float_run}, {"finetune", finetune_run}, {"retune", retune_run}}},
      {"stage_seconds", stages},
      {"config",
       {{"arch", o.arch}, {"format", o.format}, {"image_size", o.image_size}, {"epochs", o.epochs},
        {"finetune_epochs", o.finetune_epochs}, {"head_epochs", o.head_epochs}, {"train_jets", o.train_jets},
        {"val_jets", o.val_jets}, {"test_jets", o.test_jets}, {"data", o.data_dir.empty() ? "generated" : o.data_dir}}}};
  write_text_atomically(report / "metrics.json", metrics.dump(2) + "\n");

  // REPORT.md
  std::string md;
  md += fmt::format("# toptag study: {} top tagging, quantized and served\n\n", o.arch);
  md += fmt::format(
      "Reproduces the study of Duarte et al. 2019 (\"FPGA-accelerated machine learning inference as a service for "
      "particle physics computing\") on this machine with toptag. Jets: {}; {}; {}x{} images. Model: {} featurizer + fc({}, ReLU) + fc(2), Adam (lr 1e-3, batch 64), {} epoch(s). "
      "Quantized to `{}` (Brainwave block floating point; batch norms folded), fine-tuned for {} epoch(s) at lr {:g}, "
      "served by `toptag serve` over gRPC (KServe v2), head re-tuned for {} epoch(s) on the served features.\n\n",
      o.data_dir.empty() ? "generated by `toptag generate`" : "the reference files in `" + o.data_dir + "`",
      o.data_dir.empty() ? fmt::format("{} training, {} validation and {} test jets", o.train_jets, o.val_jets, o.test_jets)
                         : std::string("their training, validation and test jets"), o.image_size, o.image_size, o.arch, o.hidden, o.epochs, o.format,
      o.finetune_epochs, o.finetune_lr, o.head_epochs);

  md += "## Tagging performance (the paper's comparison)\n\n";
  md += "| model | accuracy | AUC | 1/eps_B at eps_S = 30% | 1/eps_B at eps_S = 50% | top jets | QCD jets |\n";
  md += "|---|---|---|---|---|---|---|\n";
  const std::map<std::string, std::string> what = {
      {"float", "float32"},
      {"quantized", o.format + ", before fine-tuning"},
      {"fine-tuned", o.format + ", after fine-tuning (local)"},
      {"served", "served (gRPC, one jet per request)"},
      {"served+retuned", "served features + re-tuned head"}};
  for (const json& m : eval.at("models")) {
    const std::string name = m.at("name");
    const json& r = m.at("rejection");
    auto rej = [&](const char* k) { return r.contains(k) ? fixed(r[k].get<double>(), 1) : std::string("-"); };
    md += fmt::format("| {} | {} | {} | {} | {} | {} | {} |\n", what.count(name) ? what.at(name) : name,
                      fixed(m.at("accuracy"), 4), fixed(m.at("auc"), 4), rej("0.3"), rej("0.5"),
                      m.at("n_signal").get<int64_t>(), m.at("n_background").get<int64_t>());
  }
  md += fmt::format(
      "\nServed against local scores of the same fine-tuned model on the same {} jets: max |difference| {:.3g}, "
      "mean {:.3g}, decisions flipped {:.4f}%, AUC difference {:+.5f}.\n\n",
      served.size(), diff.max_abs_diff, diff.mean_abs_diff, 100 * diff.flip_fraction, diff.auc_diff);
  md += "![ROC curves](roc.png)\n\n";

  md += "## Latency and throughput (the paper's Table 1, on this machine)\n\n";
  md += fmt::format("The served model (`{}`, {}x{} images, {} fake-quantized) on this machine's CPU, {} hardware "
                    "threads. Latency is the median time of one call; throughput counts inferences (jets) per second.\n\n",
                    o.arch, o.image_size, o.image_size, o.format, max_threads);
  md += "| platform | batch | latency p50 (ms) | throughput (inferences/s) | paper (Duarte et al. 2019) |\n";
  md += "|---|---|---|---|---|\n";
  std::vector<int> thread_counts{1};
  if (max_threads > 1) thread_counts.push_back(max_threads);
  for (int threads : thread_counts)
    for (int64_t batch : {int64_t(1), int64_t(32)}) {
      const PerfPoint* p = find_local(local_perf, threads, batch);
      if (!p) continue;
      const std::string paper = threads == 1 && batch == 1 ? "CPU, 1 core: about 1.75 s per jet (CMSSW)" : "";
      md += fmt::format("| CPU, {} thread{} | {} | {} | {} | {} |\n", threads, threads > 1 ? "s" : "", batch,
                        fixed(p->stats.p50_ms, 2), fixed(p->stats.throughput, 1), paper);
    }
  md += "| GPU | - | not measured | not measured | (toptag computes on the CPU) |\n";
  md += fmt::format("| toptag serve, 1 client | 1 | {} | {} | Brainwave service: 60 ms (cloud), 10 ms (on premises) |\n",
                    fixed(one_client->stats.p50_ms, 2), fixed(one_client->stats.throughput, 1));
  md += fmt::format("| toptag serve, {} clients (best) | 1 | {} | {} | Brainwave service: 600-700 inferences/s |\n",
                    best_server->concurrency, fixed(best_server->stats.p50_ms, 2),
                    fixed(best_server->stats.throughput, 1));
  md += "\nThe paper's figures are for its hardware (Xeon CPUs, Brainwave FPGAs in Azure); the CPU figure follows "
        "from its quoted speed-ups (about 30x for the cloud service at 60 ms, 175x on premises at 10 ms).\n\n";
  if (sixteen)
    md += fmt::format("With 16 concurrent one-jet clients the service reaches {:.1f} inferences/s, {:.0f}% of the best "
                      "local batched throughput ({:.1f}/s at batch {}, {} threads). ",
                      sixteen->stats.throughput, 100 * sixteen->stats.throughput / best_local->stats.throughput,
                      best_local->stats.throughput, best_local->batch, best_local->threads);
  md += fmt::format("At one client the served latency is {:.2f} ms against {:.2f} ms for local batch-1 inference "
                    "(the clients run on the same machine as the server).\n\n",
                    one_client->stats.p50_ms, b1 ? std::min(best_b1_ms, b1->stats.p50_ms) : best_b1_ms);
  md += "| concurrent clients | throughput (inferences/s) | p50 (ms) | p90 (ms) | p99 (ms) | errors |\n";
  md += "|---|---|---|---|---|---|\n";
  for (const PerfPoint& p : server_perf)
    md += fmt::format("| {} | {} | {} | {} | {} | {} |\n", p.concurrency, fixed(p.stats.throughput, 1),
                      fixed(p.stats.p50_ms, 2), fixed(p.stats.p90_ms, 2), fixed(p.stats.p99_ms, 2), p.stats.errors);
  md += "\n![throughput versus clients](throughput_vs_clients.png)\n\n";

  md += "## Training\n\n| run | epoch | training loss | validation loss | validation AUC | seconds |\n|---|---|---|---|---|---|\n";
  for (const auto& [run, rows] : {std::pair{"float", float_run}, std::pair{"fine-tuning", finetune_run},
                                  std::pair{"head re-tuning", retune_run}})
    for (const json& r : rows)
      md += fmt::format("| {} | {} | {} | {} | {} | {} |\n", run, r.at("epoch").get<double>(),
                        fixed(r.at("train_loss"), 4), fixed(r.at("val_loss"), 4), fixed(r.at("val_auc"), 4),
                        fixed(r.at("seconds"), 1));
  md += "\n![training curves](training.png)\n\n## Stages\n\n| stage | seconds |\n|---|---|\n";
  for (const auto& [name, seconds] : in.stage_seconds) md += fmt::format("| {} | {:.1f} |\n", name, seconds);
  md += fmt::format("| total | {:.1f} |\n\nEvery number above is in `metrics.json`; the commands that made them are "
                    "printed in the study's log, and each can be rerun by hand from the study directory.\n",
                    total_seconds);
  write_text_atomically(report / "REPORT.md", md);
}

}  // namespace toptag
