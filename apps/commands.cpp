#include "apps/commands.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "cluster/world.h"
#include "nn/parallel.h"

namespace toptag::apps {

void register_commands(CLI::App& app) {
  add_model_command(app);
  add_data_commands(app);
  add_train_command(app);
  add_predict_commands(app);
  add_quantize_command(app);
  add_eval_command(app);
  add_serve_commands(app);
  add_study_command(app);
  add_export_command(app);
}

CLI::Validator in_range(double min, double max) {
  return CLI::Validator(
      [min, max](std::string& text) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(text, v) || !std::isfinite(v) || v < min || v > max)
          return fmt::format("{} is not a number in [{:g}, {:g}]", text, min, max);
        return "";
      },
      fmt::format("in [{:g}, {:g}]", min, max));
}

void add_threads_option(CLI::App& command, int& threads) {
  command
      .add_option("--threads", threads,
                  "worker threads for OpenBLAS and toptag's own loops (0: the CPUs this process may use)")
      ->default_val(0)
      ->check(in_range(0, 1024));
}

void add_emulate_flag(CLI::App& command, bool& emulate) {
  command.add_flag("--emulate", emulate,
                   "quantized checkpoints: run the float emulation instead of the integer and packed kernels "
                   "(slower; for comparison)");
}

void apply_threads(int threads) {
  // 0: the CPUs this process may use (affinity mask, cgroup quota); with several MPI ranks on one
  // machine, shared with those whose masks overlap this one's (never oversubscribing).
  const World& world = World::get();
  std::string why = fmt::format("--threads {}", threads);
  if (threads == 0) {
    const CpuBudget budget = world.cpu_budget();
    threads = budget.count;
    why += ": " + budget.reason;
  }
  set_num_threads(threads);
  fmt::print(stderr, "{}threads: {} ({})\n", world.distributed() ? fmt::format("rank {}: ", world.rank()) : "", threads,
             why);
}

}  // namespace toptag::apps
