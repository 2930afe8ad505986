#include "io/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>

namespace toptag {

namespace {
constexpr double kTerminalRedrawSeconds = 0.1;
constexpr double kPlainLineSeconds = 5.0;
}  // namespace

std::string format_duration(double s) {
  if (s < 0) s = 0;
  if (s < 60) return fmt::format("{:.1f}s", s);
  const int64_t t = static_cast<int64_t>(s + 0.5);
  if (t < 3600) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}h{:02}m", t / 3600, (t % 3600) / 60);
}

bool Progress::interactive(std::FILE* out) {
  return ::isatty(::fileno(out)) && std::getenv("TOPTAG_PLAIN_PROGRESS") == nullptr;
}

Progress::Progress(std::string label, int64_t total, std::string unit, std::FILE* out)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      out_(out),
      interactive_(out != nullptr && interactive(out)) {
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

Progress::~Progress() {
  if (!finished_) finish();
}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::set_status(const std::string& status) {
  status_ = status;
}

void Progress::advance(int64_t n, const std::string& status) {
  done_ += n;
  if (!status.empty()) status_ = status;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_draw_).count();
  if (since >= (interactive_ ? kTerminalRedrawSeconds : kPlainLineSeconds)) {
    last_draw_ = now;
    draw(false);
  }
}

void Progress::finish(const std::string& status) {
  if (finished_) return;
  if (!status.empty()) status_ = status;
  finished_ = true;
  draw(true);
}

void Progress::draw(bool final_line) {
  if (out_ == nullptr) return;  // a silent progress (the other ranks of a distributed run)
  const double elapsed = elapsed_seconds();
  const double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
  std::string counts = total_ > 0 ? fmt::format("{}/{} {}", done_, total_, unit_) : fmt::format("{} {}", done_, unit_);
  std::string timing;
  if (final_line) {
    timing = fmt::format("{} at {:.1f} {}/s", format_duration(elapsed), rate, unit_);
  } else {
    const double eta = (total_ > 0 && rate > 0) ? static_cast<double>(total_ - done_) / rate : -1;
    timing = fmt::format("{:.1f} {}/s, ETA {}", rate, unit_, eta >= 0 ? format_duration(eta) : "?");
  }
  const std::string status = status_.empty() ? "" : "  " + status_;
  if (interactive_) {
    std::string bar;
    if (total_ > 0) {
      constexpr int kWidth = 24;
      const int filled = static_cast<int>(kWidth * std::min<int64_t>(done_, total_) / total_);
      bar = "[" + std::string(filled, '#') + std::string(kWidth - filled, '.') + "] ";
    }
    fmt::print(out_, "\r\033[2K{} {}{}  {}{}{}", label_, bar, counts, timing, status, final_line ? "\n" : "");
  } else {
    fmt::print(out_, "{}: {}  {}{}\n", label_, counts, timing, status);
  }
  std::fflush(out_);
}

}  // namespace toptag
