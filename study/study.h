// toptag study: the paper's whole study as one resumable job, run by calling the toptag command
// itself for every step (so each number in the report is what that command gives by hand, and the
// commands are printed for anyone to rerun):
//
//   1 data       generate train/val/test jets (or use --data DIR's train.h5, val.h5, test.h5)
//   2 train      ResNet-50 + fc(1024) + fc(2), Adam 1e-3, batch 64           -> float/
//   3 float      predict the test set                                          -> predictions/float.h5
//   4 quantize   post-training quantization to Brainwave's ms-fp8, predict     -> quantized.h5
//   5 finetune   quantization-aware fine-tuning at a small learning rate       -> finetuned/
//   6 serve      toptag serve the fine-tuned model; one-jet requests for the test predictions
//                and for the features of every set; perf sweep over concurrent clients
//   7 retune     the classifier head trained again on the served features      -> retuned/
//   8 local-perf in-process latency and throughput (1 thread / all, batch 1 / 32)
//   9 evaluate   toptag eval of all five prediction sets (served vs local fine-tuned)
//  10 report     report/: metrics.json, REPORT.md, roc.png, throughput_vs_clients.png, training.png
//
// Each finished stage leaves stages/<name>.done (with its duration); rerunning skips those, and an
// interrupted training run resumes from its last checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace toptag {

struct StudyOptions {
  std::string dir = "runs/study";
  std::string data_dir;  // with train.h5, val.h5, test.h5 in the reference format: use them instead
  int64_t train_jets = 10000, val_jets = 2000, test_jets = 4000;
  bool limit_data = false;  // with data_dir: use only the first train/val/test_jets of each file
  int epochs = 3, finetune_epochs = 1, head_epochs = 2;
  int image_size = 40;
  std::string arch = "resnet50", format = "ms-fp8";
  int width = 64, hidden = 1024;  // smaller only for quick tests
  double finetune_lr = 1e-4, head_lr = 1e-4;
  std::vector<int> concurrency = {1, 2, 4, 8, 16, 32};
  std::string perf_duration = "5s";
  int serve_port = 0;  // 0: a free port
  std::string toptag;  // the toptag executable (default: this process's)
  // The training stages' launcher, e.g. {"mpirun", "-np", "4"} (study --mpi 4) or {"srun", "-n", "16"}:
  // they then train data-parallel. Empty: one process.
  std::vector<std::string> launcher;
};

// Runs (or resumes) every stage; throws toptag::Error naming the stage that failed. Each command
// runs in options.dir; the caller's working directory and signal dispositions are left alone.
void run_study(const StudyOptions& options);

// For the caller's SIGINT/SIGTERM handler (async-signal-safe): passes `signal` on to the command
// running in the foreground (a training run writes its checkpoint) and makes run_study stop after
// it with "interrupted; rerun the same command to resume".
void interrupt_study(int signal);

}  // namespace toptag
