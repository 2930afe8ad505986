#include "apps/commands.h"

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
}

void add_threads_option(CLI::App& command, int& threads) {
  command.add_option("--threads", threads, "worker threads for OpenBLAS and toptag's own loops (0: all cores)")
      ->default_val(0);
}

void apply_threads(int threads) {
  set_num_threads(threads);
}

}  // namespace toptag::apps
