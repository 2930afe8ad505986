#include "training/metrics_log.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "io/config_json.h"
#include "io/files.h"
#include "nn/check.h"

namespace toptag {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Which columns may hold NaN (null in JSON): the metrics of an epoch whose run diverged.
enum class Nan { never, if_diverged };

// The one table of columns: CSV header order, JSON keys, members and what they may hold.
template <class M, class F>
void for_each_column(M& m, F&& f) {
  f("epoch", m.epoch, Nan::never);
  f("step", m.step, Nan::never);
  f("lr", m.lr, Nan::never);
  f("train_loss", m.train_loss, Nan::if_diverged);
  f("val_loss", m.val_loss, Nan::if_diverged);
  f("val_accuracy", m.val_accuracy, Nan::if_diverged);
  f("val_auc", m.val_auc, Nan::if_diverged);
  f("val_rejection_30", m.val_rejection_30, Nan::if_diverged);
  f("seconds", m.seconds, Nan::never);
}

// A log a resume cannot trust: the error says what is wrong with it and how to go on.
[[noreturn]] void refuse(const fs::path& path, const std::string& what) {
  fail("{}: {}; the checkpoint is fine: repair the log, or move it aside to resume without its rows", path.string(),
       what);
}

// One row of metrics.json: whole numbers for epoch and step, finite numbers >= 0 elsewhere, null
// (NaN) only where the table allows it.
EpochMetrics parse_row(const json& row, const fs::path& path, size_t index) {
  const std::string where = fmt::format("row {}", index + 1);
  if (!row.is_object()) refuse(path, fmt::format("{} is {}, not an object", where, row.dump()));
  EpochMetrics m;
  for_each_column(m, [&](const char* key, auto& member, Nan nan) {
    using T = std::remove_reference_t<decltype(member)>;
    if (!row.contains(key)) refuse(path, fmt::format("{} has no '{}'", where, key));
    const json& v = row[key];
    if (v.is_null() && nan == Nan::if_diverged) {
      member = std::numeric_limits<T>::quiet_NaN();
      return;
    }
    const bool whole = std::is_integral_v<T>;
    if (whole ? !v.is_number_integer() : !v.is_number())
      refuse(path, fmt::format("{}: '{}' is {}, not a {}", where, key, v.dump(), whole ? "whole number" : "number"));
    member = v.get<T>();
    if (!(member >= 0) || !std::isfinite(static_cast<double>(member)))
      refuse(path, fmt::format("{}: '{}' is {}, not a finite number >= 0", where, key, v.dump()));
  });
  return m;
}

// Refuses a log written by another run: its stored configuration differs from this run's in more
// than what a resume may change.
void check_same_run(const json& stored, const TrainConfig& run, const fs::path& path) {
  TrainConfig theirs;
  fields_from_json(stored, theirs, path.string() + " \"run\"");
  const json a = fields_to_json(theirs), b = fields_to_json(run);
  std::string differences;
  for (const auto& [key, value] : b.items()) {
    if (key == "epochs" || key == "output_dir" || a.at(key) == value) continue;
    differences += fmt::format("{}{} {} there, {} in the checkpoint", differences.empty() ? "" : "; ", key,
                               a.at(key).dump(), value.dump());
  }
  if (!differences.empty()) refuse(path, fmt::format("the log of another run ({})", differences));
}

}  // namespace

MetricsLog::MetricsLog(const TrainConfig& run) : run_(run) {}

void MetricsLog::load(int64_t finished_epochs) {
  rows_.clear();
  const fs::path path = fs::path(run_.output_dir) / "metrics.json";
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    refuse(path, fmt::format("not JSON ({})", e.what()));
  }
  if (!j.is_object() || !j.contains("epochs") || !j["epochs"].is_array()) refuse(path, "no \"epochs\" array of rows");
  if (j.contains("run")) check_same_run(j["run"], run_, path);
  for (size_t i = 0; i < j["epochs"].size(); ++i) {
    const EpochMetrics m = parse_row(j["epochs"][i], path, i);
    if (m.epoch < 1) refuse(path, fmt::format("row {}: epoch {} (epochs count from 1)", i + 1, m.epoch));
    if (m.epoch > finished_epochs)
      refuse(path, fmt::format("row {}: epoch {} is past the {} epoch(s) the checkpoint has finished (a resume from "
                               "an earlier checkpoint?)",
                               i + 1, m.epoch, finished_epochs));
    if (std::any_of(rows_.begin(), rows_.end(), [&](const EpochMetrics& r) { return r.epoch == m.epoch; }))
      refuse(path, fmt::format("row {}: epoch {} is logged twice", i + 1, m.epoch));
    rows_.push_back(m);
  }
  std::sort(rows_.begin(), rows_.end(), [](const auto& a, const auto& b) { return a.epoch < b.epoch; });
}

void MetricsLog::record(const EpochMetrics& m) {
  std::erase_if(rows_, [&](const EpochMetrics& r) { return r.epoch >= m.epoch; });
  rows_.push_back(m);
  write();
}

void MetricsLog::write() const {
  std::string csv;
  EpochMetrics header;
  for_each_column(header, [&](const char* key, auto&, Nan) { csv += csv.empty() ? key : fmt::format(",{}", key); });
  csv += '\n';
  json rows = json::array();
  for (const EpochMetrics& m : rows_) {
    csv += fmt::format("{},{},{:.6g},{:.6f},{:.6f},{:.6f},{:.6f},{:.4f},{:.1f}\n", m.epoch, m.step, m.lr, m.train_loss,
                       m.val_loss, m.val_accuracy, m.val_auc, m.val_rejection_30, m.seconds);
    json row = json::object();
    for_each_column(m, [&](const char* key, const auto& member, Nan) { row[key] = member; });
    rows.push_back(row);
  }
  const fs::path dir(run_.output_dir);
  write_text_atomically((dir / "metrics.csv").string(), csv);
  write_text_atomically((dir / "metrics.json").string(),
                        json{{"run", fields_to_json(run_)}, {"epochs", rows}}.dump(2) + "\n");
}

}  // namespace toptag
