// toptag: train, quantize, evaluate and serve top-quark jet taggers (Duarte et al. 2019).
// Each subcommand lives in its own cmd_*.cpp; this file only wires them together and turns
// errors into a message and a non-zero exit code.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <filesystem>

#include "apps/commands.h"
#include "nn/blas.h"
#include "nn/check.h"
#include "training/distributed.h"

namespace {

// Under mpirun an error on one rank ends every rank (see abort_job_if_distributed).
int failed(int code) {
  toptag::abort_job_if_distributed(code);
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"toptag: top-quark jet tagging with ResNet-50, from training to FPGA-style quantization and serving"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("toptag ") + TOPTAG_VERSION);
  toptag::apps::register_commands(app);
  try {
    toptag::blas_info();  // loads OpenBLAS with its kernel chosen, before any other thread starts
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
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
