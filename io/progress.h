// Progress reporting for long loops. On a terminal: one self-rewriting bar with rate and ETA.
// Otherwise (a log file, CI): a plain line every few seconds, so logs stay readable.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace toptag {

class Progress {
 public:
  // `total` units of work (0 if unknown), `unit` names them ("jets", "images", "steps"); out nullptr: silent.
  Progress(std::string label, int64_t total, std::string unit, std::FILE* out = stderr);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Advance by `n` units; `status` is extra text shown after the counts (e.g. "loss 0.512").
  void advance(int64_t n, const std::string& status = "");
  void set_status(const std::string& status);
  // Final line with the total time and mean rate. Called by the destructor if not called before.
  void finish(const std::string& status = "");
  double elapsed_seconds() const;

  // Whether bars are drawn (stderr is a terminal and TOPTAG_PLAIN_PROGRESS is unset).
  static bool interactive(std::FILE* out);

 private:
  void draw(bool final_line);

  std::string label_, unit_, status_;
  int64_t total_ = 0, done_ = 0;
  std::FILE* out_;
  bool interactive_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

std::string format_duration(double seconds);  // "1h02m", "3m05s", "12.3s"

}  // namespace toptag
