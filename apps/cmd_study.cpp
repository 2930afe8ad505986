// toptag study: the paper's whole study in one resumable command (see study/study.h).
#include <fmt/format.h>

#include <csignal>
#include <filesystem>
#include <sstream>

#include "apps/commands.h"
#include "io/files.h"
#include "nn/check.h"
#include "nn/parallel.h"
#include "study/report.h"
#include "study/study.h"

namespace toptag::apps {

namespace {

struct StudyArgs {
  StudyOptions options;
  std::vector<int64_t> jets;
  int mpi_ranks = 0;
  std::string launcher;
};

std::vector<std::string> split_words(const std::string& text) {
  std::vector<std::string> words;
  std::istringstream in(text);
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

void run_study_command(StudyArgs& a) {
  StudyOptions o = a.options;
  if (!a.jets.empty()) {
    if (a.jets.size() != 3) fail("--jets takes three sizes: TRAIN,VAL,TEST (e.g. 10000,2000,4000)");
    o.train_jets = a.jets[0], o.val_jets = a.jets[1], o.test_jets = a.jets[2];
    o.limit_data = true;  // with --data: only the first jets of each file
  }
  if (a.mpi_ranks > 0 && !a.launcher.empty()) fail("give --mpi N or --launcher CMD, not both");
  if (a.mpi_ranks > 0) o.launcher = {"mpirun", "-np", std::to_string(a.mpi_ranks)};
  if (!a.launcher.empty()) o.launcher = split_words(a.launcher);
  // Each stage's toptag command checks its own files; this is the study's own report, over --data.
  FileUse use;
  if (!o.data_dir.empty())
    for (const char* name : {"train.h5", "val.h5", "test.h5"})
      use.reads("--data", (std::filesystem::path(o.data_dir) / name).string());
  use.writes_in("--output-dir", (std::filesystem::path(o.dir) / "report").string(), kReportFiles).check();
  struct Handlers {
    Handlers() {
      std::signal(SIGINT, forward);
      std::signal(SIGTERM, forward);
    }
    ~Handlers() {
      std::signal(SIGINT, SIG_DFL);
      std::signal(SIGTERM, SIG_DFL);
    }
    static void forward(int signal) { interrupt_study(signal); }
  } handlers;
  // The stages run as toptag commands, each choosing (and saying) its own threads from the same CPUs.
  fmt::print(stderr, "threads: {} per stage command (its --threads 0: {})\n", usable_cpus().count,
             usable_cpus().reason);
  run_study(o);
}

}  // namespace

void add_study_command(CLI::App& app) {
  auto a = std::make_shared<StudyArgs>();
  StudyOptions& o = a->options;
  CLI::App* cmd = app.add_subcommand(
      "study", "The paper's whole study: generate, train, quantize, fine-tune, serve, re-tune, measure, report");
  cmd->add_option("--output-dir,-o", o.dir, "study directory (rerunning resumes it)")
      ->default_val("runs/study")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // scripts/study.sh -o DIR overrides its own
  cmd->add_option("--jets", a->jets, "jets: TRAIN,VAL,TEST (with --data: the first ones of each file; default all)")
      ->check(in_range(1, 1e9))
      ->delimiter(',')
      ->default_str("10000,2000,4000");
  cmd->add_option("--data", o.data_dir, "use the reference files DIR/train.h5, val.h5, test.h5 instead")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--epochs", o.epochs, "float training epochs (the paper: 10)")
      ->default_val(3)

      ->check(in_range(1, 1000));
  cmd->add_option("--finetune-epochs", o.finetune_epochs, "quantization-aware fine-tuning epochs")
      ->default_val(1)

      ->check(in_range(1, 1000));
  cmd->add_option("--head-epochs", o.head_epochs, "head re-tuning epochs on served features")
      ->default_val(2)

      ->check(in_range(1, 1000));
  cmd->add_option("--image-size", o.image_size, "image pixels per side (the paper: 224)")
      ->default_val(40)
      ->check(in_range(4, 1024));
  cmd->add_option("--arch", o.arch, "featurizer: resnet50 (the paper), or a smaller resnet for quick runs")
      ->default_val("resnet50");
  cmd->add_option("--width", o.width, "stem width (torchvision: 64)")->default_val(64)->check(in_range(1, 1024));
  cmd->add_option("--hidden", o.hidden, "fc1 width of the head")->default_val(1024)->check(in_range(1, 65536));
  cmd->add_option("--format", o.format, "quantization format (see toptag quantize)")->default_val("ms-fp8");
  cmd->add_option("--concurrency", o.concurrency, "client counts for the served throughput sweep")
      ->delimiter(',')
      ->default_str("1,2,4,8,16,32")
      ->check(in_range(1, 4096));
  cmd->add_option("--perf-duration", o.perf_duration, "measuring time per performance point")->default_val("5s");
  cmd->add_option("--mpi", a->mpi_ranks, "train on N MPI ranks: the training stages run under 'mpirun -np N'")
      ->check(in_range(1, 1e6));
  cmd->add_option("--launcher", a->launcher,
                  "the training stages' launcher instead, e.g. \"srun -n 16\" or \"mpirun --oversubscribe -np 2\"");
  cmd->callback([a] { run_study_command(*a); });
}

}  // namespace toptag::apps
