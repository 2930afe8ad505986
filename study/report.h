// The study's report: report/metrics.json (every number), report/REPORT.md (the paper's
// comparison table, its Table 1 layout with this machine's figures, the plots), training.png and
// throughput_vs_clients.png. roc.png and eval.json come from the study's `toptag eval` stage.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "study/study.h"

namespace toptag {

struct ReportInputs {
  std::string dir;  // the study directory
  StudyOptions options;
  std::vector<std::pair<std::string, double>> stage_seconds;
};

// The files write_report writes in report/.
inline const std::vector<std::string> kReportFiles = {"metrics.json", "REPORT.md", "training.png",
                                                      "throughput_vs_clients.png"};

void write_report(const ReportInputs& inputs);

}  // namespace toptag
