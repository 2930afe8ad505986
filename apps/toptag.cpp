// toptag: train, quantize, evaluate and serve top-quark jet taggers (Duarte et al. 2019).
// Each subcommand lives in its own cmd_*.cpp; this file only wires them together and turns
// errors into a message and a non-zero exit code.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <filesystem>
#include <string_view>

#include "apps/commands.h"
#include "cluster/world.h"
#include "io/h5.h"
#include "nn/blas.h"
#include "nn/check.h"

namespace {

// Under mpirun an error on one rank ends every rank (see abort_job_if_distributed).
int failed(int code) {
  toptag::abort_job_if_distributed(code);
  return code;
}

// Under mpirun only the commands that split their work over the ranks may run: N copies of any
// other would do the same work N times and race for its output file.
void check_runs_under_mpi(int argc, char** argv) {
  const char* command = nullptr;
  for (int i = 1; i < argc && command == nullptr; ++i)
    if (argv[i][0] != '-') command = argv[i];
  if (command == nullptr || !toptag::World::get().distributed()) return;
  for (const char* splits : {"train", "predict", "features"})
    if (std::string_view(command) == splits) return;
  toptag::fail(
      "toptag {} runs as one process: run it without mpirun (train, predict and features split their work "
      "over MPI ranks)",
      command);
}

// CLI11 would call a mistyped command "a subcommand is required".
void check_command_exists(const CLI::App& app, int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') return;
  std::vector<std::string> names;
  for (const CLI::App* command : app.get_subcommands({})) names.push_back(command->get_name());
  if (std::find(names.begin(), names.end(), argv[1]) == names.end())
    toptag::fail("unknown command '{}'; the commands are {}", argv[1], fmt::join(names, ", "));
}

int run(int argc, char** argv) {
  CLI::App app{"toptag: top-quark jet tagging with ResNet-50, from training to FPGA-style quantization and serving"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("toptag ") + TOPTAG_VERSION);
  toptag::apps::register_commands(app);
  try {
    toptag::blas_info();    // loads OpenBLAS with its kernel chosen, before any other thread starts
    toptag::gemm_choice();  // a bad TOPTAG_GEMM is an error now, not at the first matrix product
    check_runs_under_mpi(argc, argv);
    check_command_exists(app, argc, argv);
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);  // --help, --help-all, --version: printed, exit 0
  } catch (const CLI::ParseError& e) {
    // A usage error is bad input like any other: the same prefix and status 1, not CLI11's own codes
    // (105, 106, ...) and "Run with --help".
    const CLI::App* command = app.get_subcommands().empty() ? &app : app.get_subcommands().front();
    fmt::print(stderr, "toptag: error: {} (toptag {}--help lists the flags)\n", e.what(),
               command == &app ? "" : command->get_name() + " ");
    return failed(1);
  } catch (const toptag::Error& e) {
    fmt::print(stderr, "toptag: error: {}\n", e.what());
    return failed(1);
  } catch (const std::filesystem::filesystem_error& e) {  // an unwritable or missing directory, a full disk
    fmt::print(stderr, "toptag: error: {}: {}\n", e.path1().string(), e.code().message());
    return failed(1);
  } catch (const std::exception& e) {
    fmt::print(stderr, "toptag: internal error: {}\n", e.what());
    return failed(2);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const int status = run(argc, argv);
  toptag::h5_close_library();  // every HDF5 handle was closed as its owner went out of scope
  return status;
}
