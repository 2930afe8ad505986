#include "training/metrics_log.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "io/files.h"
#include "nn/check.h"

namespace toptag {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The one table of columns: CSV header order, JSON keys and members.
template <class M, class F>
void for_each_column(M& m, F&& f) {
  f("epoch", m.epoch);
  f("step", m.step);
  f("lr", m.lr);
  f("train_loss", m.train_loss);
  f("val_loss", m.val_loss);
  f("val_accuracy", m.val_accuracy);
  f("val_auc", m.val_auc);
  f("val_rejection_30", m.val_rejection_30);
  f("seconds", m.seconds);
}

}  // namespace

void MetricsLog::load(int64_t finished_epochs) {
  rows_.clear();
  const fs::path path = fs::path(dir_) / "metrics.json";
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  const json j = json::parse(in, nullptr, false);
  // The checkpoint, not this log, is the record of the run: a damaged log costs its rows, never the run.
  if (!j.is_object() || !j.contains("epochs") || !j["epochs"].is_array()) {
    fmt::print(stderr, "warning: {} is damaged; its earlier rows are lost, later epochs are logged afresh\n",
               path.string());
    return;
  }
  for (const json& row : j["epochs"]) {
    EpochMetrics m;
    try {
      for_each_column(m, [&](const char* key, auto& member) {
        const json& v = row.at(key);
        // A diverged epoch's NaN metrics are stored as null.
        member = v.is_null() ? std::numeric_limits<std::remove_reference_t<decltype(member)>>::quiet_NaN()
                             : v.get<std::remove_reference_t<decltype(member)>>();
      });
    } catch (const json::exception& e) {
      fmt::print(stderr, "warning: {}: skipping a damaged row ({})\n", path.string(), e.what());
      continue;
    }
    if (m.epoch >= 1 && m.epoch <= finished_epochs) {
      std::erase_if(rows_, [&](const EpochMetrics& r) { return r.epoch == m.epoch; });
      rows_.push_back(m);
    }
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
  for_each_column(header, [&](const char* key, auto&) { csv += csv.empty() ? key : fmt::format(",{}", key); });
  csv += '\n';
  json rows = json::array();
  for (const EpochMetrics& m : rows_) {
    csv += fmt::format("{},{},{:.6g},{:.6f},{:.6f},{:.6f},{:.6f},{:.4f},{:.1f}\n", m.epoch, m.step, m.lr, m.train_loss,
                       m.val_loss, m.val_accuracy, m.val_auc, m.val_rejection_30, m.seconds);
    json row = json::object();
    for_each_column(m, [&](const char* key, const auto& member) { row[key] = member; });
    rows.push_back(row);
  }
  write_text_atomically((fs::path(dir_) / "metrics.csv").string(), csv);
  write_text_atomically((fs::path(dir_) / "metrics.json").string(), json{{"epochs", rows}}.dump(2) + "\n");
}

}  // namespace toptag
