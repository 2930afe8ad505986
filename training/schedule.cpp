#include "training/schedule.h"

#include <cmath>
#include <numbers>

#include "nn/check.h"

namespace toptag {

void validate(const ScheduleOptions& o) {
  if (o.kind != "constant" && o.kind != "step" && o.kind != "cosine")
    fail("unknown learning-rate schedule '{}' (constant, step, cosine)", o.kind);
  if (o.warmup_steps < 0) fail("warm-up steps must be >= 0, got {}", o.warmup_steps);
  if (!(o.gamma > 0 && o.gamma <= 1)) fail("--gamma must be in (0, 1], got {}", o.gamma);
  if (o.kind == "step" && (o.step_epochs <= 0 || o.gamma <= 0))
    fail("step schedule needs step epochs > 0 and gamma > 0 (got {}, {})", o.step_epochs, o.gamma);
}

double learning_rate(double base, const ScheduleOptions& o, int64_t step, int64_t steps_per_epoch,
                     int64_t total_steps) {
  double lr = base;
  if (o.kind == "step") {
    const double epoch = static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, steps_per_epoch));
    lr *= std::pow(o.gamma, std::floor(epoch / o.step_epochs));
  } else if (o.kind == "cosine") {
    const double t = std::min(1.0, static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, total_steps)));
    lr *= 0.5 * (1 + std::cos(std::numbers::pi * t));
  }
  if (o.warmup_steps > 0 && step < o.warmup_steps)
    lr *= static_cast<double>(step + 1) / static_cast<double>(o.warmup_steps);
  return lr;
}

}  // namespace toptag
