#include "study/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "eval/plot.h"
#include "eval/predictions.h"
#include "eval/report.h"
#include "io/files.h"
#include "nn/blas.h"
#include "nn/check.h"
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

// A training run's epochs, as the trainer writes them to metrics.json (empty when the run has none).
json read_training_epochs(const fs::path& run) {
  if (!fs::exists(run / "metrics.json")) return json::array();
  return read_json(run / "metrics.json").at("epochs");
}

// Loss (training and validation) and validation AUC per epoch of the float training run, with the
// fine-tuning epochs after it.
void plot_training(const fs::path& path, const json& float_run, const json& finetune_run) {
  if (float_run.empty()) fail("{}: the float training run has no epochs to plot", path.string());
  XY train_loss, val_loss, auc, ft_loss, ft_auc;
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
  std::string script =
      "set multiplot layout 1,2\nset grid\nset xlabel 'epoch'\nset key top right\n"
      "set offsets graph 0.05, graph 0.05, 0, 0\n";
  script += "set title 'loss'\nset ylabel 'cross-entropy'\n";
  script += "plot '-' with linespoints lw 2 pt 7 title 'training', '-' with linespoints lw 2 pt 5 title 'validation'";
  if (!ft_loss.empty()) script += ", '-' with linespoints lw 2 pt 9 title 'validation, quantized fine-tuning'";
  script += "\n" + gnuplot_data(train_loss) + gnuplot_data(val_loss) + (ft_loss.empty() ? "" : gnuplot_data(ft_loss));
  script += "set title 'validation AUC'\nset ylabel 'AUC'\nset key bottom right\n";
  script += "plot '-' with linespoints lw 2 pt 7 title 'float'";
  if (!ft_auc.empty()) script += ", '-' with linespoints lw 2 pt 9 title 'quantized fine-tuning'";
  script += "\n" + gnuplot_data(auc) + (ft_auc.empty() ? "" : gnuplot_data(ft_auc)) + "unset multiplot\n";
  render_plot(path.string(), 1000, 450, script);
}

json perf_rows(const std::vector<PerfPoint>& points) {
  json rows = json::array();
  for (const PerfPoint& p : points)
    rows.push_back({{"mode", p.mode},
                    {"concurrency", p.concurrency},
                    {"threads", p.threads},
                    {"batch", p.batch},
                    {"throughput", p.stats.throughput},
                    {"mean_ms", p.stats.mean_ms},
                    {"p50_ms", p.stats.p50_ms},
                    {"p90_ms", p.stats.p90_ms},
                    {"p95_ms", p.stats.p95_ms},
                    {"p99_ms", p.stats.p99_ms},
                    {"requests", p.stats.requests},
                    {"errors", p.stats.errors}});
  return rows;
}

const PerfPoint* find_local(const std::vector<PerfPoint>& points, int threads, int64_t batch) {
  for (const PerfPoint& p : points)
    if (p.mode == "local" && p.threads == threads && p.batch == batch) return &p;
  return nullptr;
}

std::string fixed(double v, int digits) {
  return fmt::format("{:.{}f}", v, digits);
}

// The headline speed figures, picked from the perf measurements.
struct Speed {
  std::vector<PerfPoint> local, server;
  std::vector<PerfPoint> paper_input;  // local, 224x224x3 (empty for a study made before it was measured)
  // The same in float32: the float model at the study's size, and the architecture at 224x224x3
  // (empty for a study made before they were measured).
  std::vector<PerfPoint> local_float, paper_input_float;
  const PerfPoint* best_local = nullptr;
  const PerfPoint* best_server = nullptr;
  const PerfPoint* one_client = nullptr;  // the lowest concurrency measured
  const PerfPoint* sixteen = nullptr;     // 16 clients, if measured
  int max_threads = 1;
  double best_batch1_ms = 0;  // fastest local batch-1 median

  Speed(std::vector<PerfPoint> local_points, std::vector<PerfPoint> server_points)
      : local(std::move(local_points)), server(std::move(server_points)) {
    if (local.empty() || server.empty()) fail("no performance measurements to report");
    best_local = &local.front();
    best_batch1_ms = 1e300;
    for (const PerfPoint& p : local) {
      if (p.stats.throughput > best_local->stats.throughput) best_local = &p;
      if (p.batch == 1) best_batch1_ms = std::min(best_batch1_ms, p.stats.p50_ms);
      max_threads = std::max(max_threads, p.threads);
    }
    best_server = one_client = &server.front();
    for (const PerfPoint& p : server) {
      if (p.stats.throughput > best_server->stats.throughput) best_server = &p;
      if (p.concurrency < one_client->concurrency) one_client = &p;
      if (p.concurrency == 16) sixteen = &p;
    }
  }

  json to_json() const {
    return {{"local", perf_rows(local)},
            {"server", perf_rows(server)},
            {"best_local_throughput", best_local->stats.throughput},
            {"best_server_throughput", best_server->stats.throughput},
            {"server_16_clients_over_best_local",
             sixteen ? json(sixteen->stats.throughput / best_local->stats.throughput) : json(nullptr)},
            {"server_1_client_p50_ms", one_client->stats.p50_ms},
            {"local_batch1_best_p50_ms", best_batch1_ms},
            {"local_224x224x3", perf_rows(paper_input)},
            {"local_float", perf_rows(local_float)},
            {"local_224x224x3_float", perf_rows(paper_input_float)},
            {"blas", blas_info().summary()},
            {"training_matrix_products", gemm_choice().reason}};
  }
};

std::string introduction(const StudyOptions& o) {
  return fmt::format(
      "# toptag study: {} top tagging, quantized and served\n\n"
      "Reproduces the study of Duarte et al. 2019 (\"FPGA-accelerated machine learning inference as a service for "
      "particle physics computing\") on this machine with toptag. Jets: {}; {}; {}x{} images. Model: {} featurizer + "
      "fc({}, ReLU) + fc(2), Adam (lr 1e-3, batch 64), {} epoch(s). Quantized to `{}` (batch norms folded), "
      "fine-tuned for {} epoch(s) at lr {:g}, served by `toptag serve` over gRPC (KServe v2), head re-tuned for {} "
      "epoch(s) on the served features.\n\n",
      o.arch, o.data_dir.empty() ? "generated by `toptag generate`" : "the reference files in `" + o.data_dir + "`",
      o.data_dir.empty() || o.limit_data
          ? fmt::format("{} training, {} validation and {} test jets", o.train_jets, o.val_jets, o.test_jets)
          : std::string("all of their training, validation and test jets"),
      o.image_size, o.image_size, o.arch, o.hidden, o.epochs, o.format, o.finetune_epochs, o.finetune_lr,
      o.head_epochs);
}

// A number of eval.json: infinite values are the strings "inf" and "-inf" (null in "rejection").
double json_number(const json& v) {
  if (v.is_number()) return v.get<double>();
  if (v.is_string() && v.get<std::string>() == "-inf") return -std::numeric_limits<double>::infinity();
  return std::numeric_limits<double>::infinity();
}

// "0.912 [0.905, 0.919]": the value and its 68% bootstrap interval, to the interval's precision
// (`decimals` when eval.json holds no interval).
std::string with_interval(double value, const json* uncertainty, int decimals) {
  if (!uncertainty) return format_value(value, decimals);
  const json& ci = uncertainty->at("ci68");
  const Interval i{json_number(ci.at(0)), json_number(ci.at(1))};
  const int d = decimals_for(i, decimals);
  return fmt::format("{} [{}, {}]", format_value(value, d), format_value(i.lo, d), format_value(i.hi, d));
}

// The paper's comparison: one row per prediction set of toptag eval's summary, each figure with its
// bootstrap interval, then one sentence per model against float.
std::string physics_section(const StudyOptions& o, const json& eval, const Comparison& diff, int64_t jets) {
  std::string md = "## Tagging performance (the paper's comparison)\n\n";
  md += "| model | accuracy | AUC | 1/eps_B at eps_S = 30% | 1/eps_B at eps_S = 50% | top jets | QCD jets |\n";
  md += "|---|---|---|---|---|---|---|\n";
  const std::map<std::string, std::string> what = {{"float", "float32"},
                                                   {"quantized", o.format + ", before fine-tuning"},
                                                   {"fine-tuned", o.format + ", after fine-tuning (local)"},
                                                   {"served", "served (gRPC, one jet per request)"},
                                                   {"served+retuned", "served features + re-tuned head"}};
  int resamples = 0;
  for (const json& m : eval.at("models")) {
    const std::string name = m.at("name");
    const json* boot = m.contains("bootstrap") ? &m.at("bootstrap") : nullptr;
    if (boot) resamples = boot->at("resamples").get<int>();
    auto figure = [&](const char* metric, int decimals) {
      return with_interval(json_number(m.at(metric)), boot ? &boot->at(metric) : nullptr, decimals);
    };
    auto rejection = [&](const char* k) {
      const json& r = m.at("rejection");
      const double v = r.contains(k) ? json_number(r[k]) : std::numeric_limits<double>::infinity();
      const json* u = boot && boot->at("rejection").contains(k) ? &boot->at("rejection").at(k) : nullptr;
      return with_interval(v, u, 1);
    };
    md += fmt::format("| {} | {} | {} | {} | {} | {} | {} |\n", what.count(name) ? what.at(name) : name,
                      figure("accuracy", 4), figure("auc", 4), rejection("0.3"), rejection("0.5"),
                      m.at("n_signal").get<int64_t>(), m.at("n_background").get<int64_t>());
  }
  if (resamples > 0) {
    md += fmt::format(
        "\nIn brackets: the 68% interval (16th to 84th percentile) of {} bootstrap resamples of the test jets, "
        "drawn per class; the 95% intervals are in `metrics.json`. Against float, on the same resamples:\n\n",
        resamples);
    for (const json& c : eval.value("comparisons", json::array()))
      md += "- " + c.at("summary").get<std::string>() + "\n";
  }
  md += fmt::format(
      "\nServed against local scores of the same fine-tuned model on the same {} jets: max |difference| {:.3g}, "
      "mean {:.3g}, decisions flipped {:.4f}%, AUC difference {:+.5f}.\n\n![ROC curves](roc.png)\n\n",
      jets, diff.max_abs_diff, diff.mean_abs_diff, 100 * diff.flip_fraction, diff.auc_diff);
  return md;
}

// The paper's Table 1 layout with this machine's figures, then the throughput sweep.
std::string speed_section(const StudyOptions& o, const Speed& s) {
  std::string md = "## Latency and throughput (the paper's Table 1, on this machine)\n\n";
  md += fmt::format(
      "The served model (`{}`, {}x{} images, weights and activations in {}) and the float model it was "
      "quantized from, on this machine's CPU with {} hardware threads, and the same architecture at the "
      "paper's 224x224x3 input (untrained: timing only), in both precisions. Quantized models run on "
      "toptag's integer kernels where the format allows (`toptag model -c` says which). Latency is the median "
      "time of one call; throughput counts inferences (jets) per second. Linear algebra: {}; training's "
      "matrix products on {}.\n\n",
      o.arch, o.image_size, o.image_size, o.format, s.max_threads, blas_info().summary(), gemm_choice().reason);
  md +=
      "| platform | precision | batch | latency p50 (ms) | throughput (inferences/s) | paper (Duarte et al. 2019) |\n";
  md += "|---|---|---|---|---|---|\n";
  std::vector<int> thread_counts{1};
  if (s.max_threads > 1) thread_counts.push_back(s.max_threads);
  const std::string size = fmt::format("{}x{}", o.image_size, o.image_size), paper = "224x224x3";
  struct Rows {
    const std::vector<PerfPoint>* points;
    std::string input, precision;
  };
  for (const Rows& rows : {Rows{&s.local_float, size, "float32"}, Rows{&s.local, size, o.format},
                           Rows{&s.paper_input_float, paper, "float32"}, Rows{&s.paper_input, paper, o.format}})
    for (int threads : thread_counts)
      for (int64_t batch : {int64_t(1), int64_t(32)}) {
        const PerfPoint* p = find_local(*rows.points, threads, batch);
        if (!p) continue;
        const bool paper_row = threads == 1 && batch == 1 && rows.points == &s.paper_input;
        md += fmt::format("| CPU, {} thread{}, {} | {} | {} | {} | {} | {} |\n", threads, threads > 1 ? "s" : "",
                          rows.input, rows.precision, batch, fixed(p->stats.p50_ms, 2), fixed(p->stats.throughput, 1),
                          paper_row ? "CPU, 1 core: about 1.75 s per jet (CMSSW)" : "");
      }
  md += "| GPU | - | - | not measured | not measured | (toptag computes on the CPU) |\n";
  md += fmt::format(
      "| toptag serve, {} client{} | {} | 1 | {} | {} | Brainwave service: 60 ms (cloud), 10 ms (on premises) |\n",
      s.one_client->concurrency, s.one_client->concurrency > 1 ? "s" : "", o.format,
      fixed(s.one_client->stats.p50_ms, 2), fixed(s.one_client->stats.throughput, 1));
  md +=
      fmt::format("| toptag serve, {} clients (best) | {} | 1 | {} | {} | Brainwave service: 600-700 inferences/s |\n",
                  s.best_server->concurrency, o.format, fixed(s.best_server->stats.p50_ms, 2),
                  fixed(s.best_server->stats.throughput, 1));
  md +=
      "\nThe paper's figures are for its hardware (Xeon CPUs, Brainwave FPGAs in Azure); the CPU figure follows "
      "from its quoted speed-ups (about 30x for the cloud service at 60 ms, 175x on premises at 10 ms).\n\n";
  if (s.sixteen)
    md += fmt::format(
        "With 16 concurrent one-jet clients the service reaches {:.1f} inferences/s, {:.0f}% of the best "
        "local batched throughput ({:.1f}/s at batch {}, {} threads). ",
        s.sixteen->stats.throughput, 100 * s.sixteen->stats.throughput / s.best_local->stats.throughput,
        s.best_local->stats.throughput, s.best_local->batch, s.best_local->threads);
  md += fmt::format(
      "With {} client{} the served latency is {:.2f} ms against {:.2f} ms for local batch-1 inference "
      "(the clients run on the same machine as the server).\n\n",
      s.one_client->concurrency, s.one_client->concurrency > 1 ? "s" : "", s.one_client->stats.p50_ms,
      s.best_batch1_ms);
  md += "| concurrent clients | throughput (inferences/s) | p50 (ms) | p90 (ms) | p99 (ms) | errors |\n";
  md += "|---|---|---|---|---|---|\n";
  for (const PerfPoint& p : s.server)
    md += fmt::format("| {} | {} | {} | {} | {} | {} |\n", p.concurrency, fixed(p.stats.throughput, 1),
                      fixed(p.stats.p50_ms, 2), fixed(p.stats.p90_ms, 2), fixed(p.stats.p99_ms, 2), p.stats.errors);
  return md + "\n![throughput versus clients](throughput_vs_clients.png)\n\n";
}

std::string training_section(const json& float_run, const json& finetune_run, const json& retune_run,
                             const std::vector<std::pair<std::string, double>>& stage_seconds) {
  std::string md = "## Training\n\n| run | epoch | training loss | validation loss | validation AUC | seconds |\n";
  md += "|---|---|---|---|---|---|\n";
  for (const auto& [run, rows] :
       {std::pair{"float", float_run}, std::pair{"fine-tuning", finetune_run}, std::pair{"head re-tuning", retune_run}})
    for (const json& r : rows)
      md += fmt::format("| {} | {} | {} | {} | {} | {} |\n", run, r.at("epoch").get<double>(),
                        fixed(r.at("train_loss"), 4), fixed(r.at("val_loss"), 4), fixed(r.at("val_auc"), 4),
                        fixed(r.at("seconds"), 1));
  md += "\n![training curves](training.png)\n\n## Stages\n\n| stage | seconds |\n|---|---|\n";
  double total = 0;
  for (const auto& [name, seconds] : stage_seconds)
    md += fmt::format("| {} | {:.1f} |\n", name, seconds), total += seconds;
  md += fmt::format(
      "| total | {:.1f} |\n\nEvery number above is in `metrics.json`; the commands that made them are "
      "printed in the study's log, and each can be rerun by hand from the study directory.\n",
      total);
  return md;
}

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

  Speed speed(read_perf_csv((dir / "perf/local.csv").string()), read_perf_csv((dir / "perf/server.csv").string()));
  for (const auto& [points, file] : {std::pair{&speed.paper_input, "perf/local_224x224x3.csv"},
                                     std::pair{&speed.local_float, "perf/local_float.csv"},
                                     std::pair{&speed.paper_input_float, "perf/local_224x224x3_float.csv"}})
    if (fs::exists(dir / file)) *points = read_perf_csv((dir / file).string());
  std::vector<PerfPoint> all = speed.local;
  all.insert(all.end(), speed.server.begin(), speed.server.end());
  plot_throughput((report / "throughput_vs_clients.png").string(), all, "toptag serve, one jet per request, " + o.arch);

  const json float_run = read_training_epochs(dir / "float");
  const json finetune_run = read_training_epochs(dir / "finetuned");
  const json retune_run = read_training_epochs(dir / "retuned");
  plot_training(report / "training.png", float_run, finetune_run);

  json stages = json::object();
  for (const auto& [name, seconds] : in.stage_seconds) stages[name] = seconds;
  const json metrics = {{"models", eval.at("models")},
                        {"comparisons", eval.value("comparisons", json::array())},
                        {"served_vs_local",
                         {{"reference", "fine-tuned (local)"},
                          {"max_abs_diff", diff.max_abs_diff},
                          {"mean_abs_diff", diff.mean_abs_diff},
                          {"flip_fraction", diff.flip_fraction},
                          {"auc_diff", diff.auc_diff}}},
                        {"performance", speed.to_json()},
                        {"training", {{"float", float_run}, {"finetune", finetune_run}, {"retune", retune_run}}},
                        {"stage_seconds", stages},
                        {"config",
                         {{"arch", o.arch},
                          {"format", o.format},
                          {"image_size", o.image_size},
                          {"epochs", o.epochs},
                          {"finetune_epochs", o.finetune_epochs},
                          {"head_epochs", o.head_epochs},
                          {"train_jets", o.train_jets},
                          {"val_jets", o.val_jets},
                          {"test_jets", o.test_jets},
                          {"data", o.data_dir.empty() ? "generated" : o.data_dir}}}};
  write_text_atomically((report / "metrics.json").string(), metrics.dump(2) + "\n");

  write_text_atomically((report / "REPORT.md").string(),
                        introduction(o) + physics_section(o, eval, diff, served.size()) + speed_section(o, speed) +
                            training_section(float_run, finetune_run, retune_run, in.stage_seconds));
}

}  // namespace toptag
