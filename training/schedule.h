// Learning-rate schedules, evaluated per optimizer step (so a resumed run continues exactly).
//   constant: lr
//   step:     lr * gamma^floor(epoch / step_epochs)
//   cosine:   lr * (1 + cos(pi * step / total_steps)) / 2
// and, for any of them, a linear warm-up over the first warmup_steps steps.
#pragma once

#include <cstdint>
#include <string>

namespace toptag {

struct ScheduleOptions {
  std::string kind = "constant";  // constant | step | cosine
  int64_t warmup_steps = 0;
  double step_epochs = 3;
  double gamma = 0.1;
};

// Throws for an unknown kind or bad parameters.
void validate(const ScheduleOptions& options);
double learning_rate(double base, const ScheduleOptions& options, int64_t step, int64_t steps_per_epoch,
                     int64_t total_steps);

}  // namespace toptag
