// toptag train: the paper's training recipe, with resume, interrupts, head-only training.
#include <fmt/format.h>

#include <atomic>
#include <csignal>
#include <filesystem>

#include "apps/commands.h"
#include "apps/image_options.h"
#include "io/files.h"
#include "nn/blas.h"
#include "nn/parallel.h"
#include "training/distributed.h"
#include "training/trainer.h"

namespace toptag::apps {

namespace {

std::atomic<bool> stop_requested{false};

extern "C" void request_stop(int) {
  stop_requested.store(true);
}

struct TrainArgs {
  TrainConfig config;
  ImageArgs image;
  std::string resume;
  CLI::Option* epochs_option = nullptr;
};

// A resumed run writes into the directory the user named: DIR itself, or the folder holding CKPT.
std::string resume_output_dir(const std::string& dir_or_file) {
  const std::filesystem::path p(dir_or_file);
  if (std::filesystem::is_directory(p)) return p.string();
  return p.has_parent_path() ? p.parent_path().string() : std::string(".");
}

// Nothing the run reads may be one of the files it writes (--init run/best.h5 -o run, say).
void check_files(const TrainConfig& c, const std::string& output_dir) {
  FileUse()
      .reads("--train", c.train_path)
      .reads("--val", c.val_path)
      .reads("--features", c.features_path)
      .reads("--init", c.init_path)
      .writes_in("--output-dir", output_dir, kRunFiles)
      .check();
}

void run_train(TrainArgs& a) {
  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
  TrainResult r;
  std::string output_dir = a.config.output_dir;
  if (!a.resume.empty()) {
    const std::string checkpoint = resume_checkpoint_path(a.resume);
    output_dir = resume_output_dir(a.resume);
    const TrainConfig stored = read_train_config(checkpoint);
    check_files(stored, output_dir);
    apply_threads(stored.threads);
    fmt::print(stderr, "resuming {} from {}\n", output_dir, checkpoint);
    // The number of epochs is the only setting a resume may change.
    r = resume(checkpoint, output_dir, a.epochs_option->count() > 0 ? a.config.epochs : 0, &stop_requested);
  } else {
    TrainConfig config = a.config;
    config.images = a.image.merged();
    // Stored absolute, so that `--resume` works from any directory.
    for (std::string* path : {&config.train_path, &config.val_path, &config.features_path, &config.init_path})
      if (!path->empty()) *path = std::filesystem::absolute(*path).lexically_normal().string();
    check_files(config, config.output_dir);
    apply_threads(config.threads);
    r = train(config, &stop_requested);
  }
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  if (!World::get().root()) return;  // rank 0 reports for the job
  if (r.interrupted) {
    fmt::print(
        stderr,
        "interrupted in epoch {} after {} steps; checkpoint written to {}\nresume with: toptag train --resume {}\n",
        r.state.epoch + 1, r.state.step_in_epoch, r.last_checkpoint, output_dir);
    return;
  }
  fmt::print("trained {} epochs; best validation AUC {:.4f} (epoch {})\nlast checkpoint: {}\nbest checkpoint: {}\n",
             r.state.epoch, r.state.best_auc, r.state.best_epoch, r.last_checkpoint, r.best_checkpoint);
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  TrainConfig& c = a->config;
  CLI::App* cmd = app.add_subcommand("train", "Train a top tagger (defaults: the paper's ResNet-50 recipe)");
  cmd->add_option("--train", c.train_path, "training jets: reference-format or cached image file");
  cmd->add_option("--val", c.val_path, "validation jets (or, with --features, a features file)");
  cmd->add_option("--key", c.key, "the pandas key in --train and --val, where a file holds several");
  cmd->add_option("--output-dir,-o", c.output_dir, "directory for checkpoints and metrics");
  cmd->add_option("--features", c.features_path, "train only the head on a features file (toptag features)");
  cmd->add_option("--init", c.init_path, "start from this checkpoint's weights");
  cmd->add_option("--resume", a->resume, "continue the run in this directory (or from this checkpoint)");
  cmd->add_option("--arch", c.arch, "resnet10, resnet18, resnet34, resnet50, resnet101, resnet152")
      ->default_val("resnet50");
  cmd->add_option("--width", c.width, "stem width (torchvision: 64)")->default_val(64)->check(in_range(1, 1024));
  cmd->add_option("--hidden", c.hidden, "fc1 width of the head")->default_val(1024)->check(in_range(1, 65536));
  a->epochs_option = cmd->add_option("--epochs", c.epochs, "epochs")->default_val(10)->check(in_range(1, 1e6));
  cmd->add_option("--batch-size", c.batch_size, "minibatch size")->default_val(64)->check(in_range(2, 65536));
  cmd->add_option("--eval-batch-size", c.eval_batch_size, "batch size for validation")
      ->default_val(256)
      ->check(in_range(1, 65536));
  cmd->add_option("--lr", c.lr, "Adam learning rate")->default_val(1e-3)->check(in_range(1e-12, 10));
  cmd->add_option("--lr-schedule", c.schedule.kind, "constant, step or cosine")->default_val("constant");
  cmd->add_option("--warmup-steps", c.schedule.warmup_steps, "linear warm-up steps")
      ->default_val(0)
      ->check(in_range(0, 1e9));
  cmd->add_option("--step-epochs", c.schedule.step_epochs, "step schedule: epochs between decays")
      ->default_val(3)
      ->check(in_range(1, 1e6));
  cmd->add_option("--gamma", c.schedule.gamma, "step schedule: decay factor")
      ->default_val(0.1)
      ->check(in_range(1e-9, 1));
  cmd->add_option("--weight-decay", c.weight_decay, "decoupled weight decay (AdamW)")
      ->default_val(0.0)
      ->check(in_range(0, 1));
  cmd->add_option("--seed", c.seed, "seed for initial weights and data order")->default_val(1);
  cmd->add_option("--max-train-jets", c.max_train_jets, "use only the first N training jets (0: all)")
      ->default_val(0)
      ->check(in_range(0, 1e12));
  cmd->add_option("--max-val-jets", c.max_val_jets, "use only the first N validation jets (0: all)")
      ->default_val(0)
      ->check(in_range(0, 1e12));
  cmd->add_flag("--freeze-backbone", c.freeze_backbone, "train only fc1 and fc2 (the featurizer stays fixed)");
  cmd->add_flag("--sync-batchnorm", c.sync_batchnorm,
                "under mpirun: batch-norm statistics over every rank's batch (N ranks then match one process)");
  cmd->add_option("--bucket-mb", c.bucket_mb,
                  "under mpirun: gradients are averaged in buckets of this many MB, each as soon as backward "
                  "has produced it")
      ->default_val(25)
      ->check(in_range(0.001, 4096));
  cmd->add_option("--quantize", c.quantize,
                  "quantization-aware training with weights in this format (see toptag quantize)");
  cmd->add_option("--quantize-activations", c.quantize_activations,
                  "... and the inputs of every conv/linear in this one");
  cmd->add_option("--ste", c.ste, "straight-through estimator: masked or identity")->default_val("masked");
  cmd->add_option("--calibration-batches", c.calibration_batches, "int8 activations: calibration batches")
      ->default_val(8)
      ->check(in_range(1, 1e6));
  a->image.add_to(*cmd);
  add_threads_option(*cmd, c.threads);
  cmd->callback([a] { run_train(*a); });
}

}  // namespace toptag::apps
