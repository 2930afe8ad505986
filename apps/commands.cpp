#include "apps/commands.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "nn/parallel.h"
#include "cluster/world.h"

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
  command.add_option("--threads", threads, "worker threads for OpenBLAS and toptag's own loops (0: all cores)")
      ->default_val(0)
      ->check(in_range(0, 1024));
}

void apply_threads(int threads) {
  // 0: the cores available to this process; with several MPI ranks on one machine, the cores
  // divided among them (never oversubscribing).
  const World& world = World::get();
  if (threads == 0 && world.distributed()) threads = std::max(1, hardware_threads() / world.local_size());
  set_num_threads(threads);
}

}  // namespace toptag::apps
