// Registration of every toptag subcommand. Each add_*_command adds one subcommand whose callback
// parses nothing itself (CLI11 does) and calls into the libraries.
#pragma once

#include <CLI/CLI.hpp>

namespace toptag::apps {

void register_commands(CLI::App& app);

void add_model_command(CLI::App& app);
void add_data_commands(CLI::App& app);  // generate, images, info
void add_train_command(CLI::App& app);
void add_predict_commands(CLI::App& app);  // predict, features
void add_eval_command(CLI::App& app);
void add_quantize_command(CLI::App& app);
void add_serve_commands(CLI::App& app);  // serve, perf
void add_study_command(CLI::App& app);
void add_export_command(CLI::App& app);  // ONNX and a Triton model repository

// Numeric flags take finite values in [min, max] only: CLI::Range lets NaN through, and a flag
// without a check let zero, negative or absurd values reach the libraries.
CLI::Validator in_range(double min, double max);

// --threads N, shared by every command that computes; applied by apply_threads() (0: the CPUs this
// process may use, under MPI shared with the ranks bound to the same ones), which says on stderr how
// many threads it runs and why.
void add_threads_option(CLI::App& command, int& threads);

// --emulate, shared by the commands that run a checkpoint: a quantized model runs the float
// emulation instead of the integer kernels (Tagger::emulate), for comparison.
void add_emulate_flag(CLI::App& command, bool& emulate);
void apply_threads(int threads);

}  // namespace toptag::apps
