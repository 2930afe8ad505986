#include "study/study.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>
#include <tuple>

#include "io/files.h"
#include "nn/check.h"
#include "nn/parallel.h"
#include "quantize/format.h"
#include "study/report.h"

extern char** environ;

namespace toptag {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;
using Args = std::vector<std::string>;

Args operator+(Args a, const Args& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Set by interrupt_study(), from the application's SIGINT/SIGTERM handler.
volatile std::sig_atomic_t interrupted = 0;
volatile pid_t foreground = 0;

void check_interrupted() {
  if (interrupted) fail("interrupted; rerun the same command to resume");
}

std::string quoted(const std::vector<std::string>& args) {
  std::string out;
  for (const std::string& a : args) {
    if (!out.empty()) out += ' ';
    out += a.find_first_of(" '\"<>,") == std::string::npos ? a : "'" + a + "'";
  }
  return out;
}

// Starts `args` in directory `cwd` (the study's own working directory is never changed); args[0]
// is looked up on the PATH unless it holds a slash.
pid_t spawn(const std::vector<std::string>& args, const std::string& cwd) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addchdir_np(&actions, cwd.c_str());
  pid_t pid = 0;
  const int e = posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (e != 0) fail("cannot start {}: {}", args[0], std::strerror(e));
  return pid;
}

int wait_for(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) fail("waitpid failed: {}", std::strerror(errno));
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

// One toptag command, run in the study directory (so it can be retyped there by hand), printed as a
// user would type it, with its output passed through.
class Runner {
 public:
  Runner(std::string toptag, std::string dir) : toptag_(std::move(toptag)), dir_(std::move(dir)) {}

  // `launcher` (e.g. mpirun -np 4) goes in front of toptag.
  void run(const std::vector<std::string>& args, const std::vector<std::string>& launcher = {}) const {
    const std::string shown = (launcher.empty() ? "" : quoted(launcher) + " ") + "toptag " + quoted(args);
    fmt::print("$ {}\n", shown);
    std::fflush(stdout);
    check_interrupted();
    std::vector<std::string> full = launcher;
    for (std::string& part : command(args)) full.push_back(std::move(part));
    foreground = spawn(full, dir_);
    const int code = wait_for(foreground);
    foreground = 0;
    check_interrupted();
    if (code != 0) fail("'{}' failed with exit code {} (in {})", shown, code, dir_);
  }
  const std::string& dir() const { return dir_; }
  pid_t start(const std::vector<std::string>& args) const {
    fmt::print("$ toptag {} &\n", quoted(args));
    std::fflush(stdout);
    return spawn(command(args), dir_);
  }

 private:
  std::vector<std::string> command(const std::vector<std::string>& args) const {
    std::vector<std::string> full{toptag_};
    full.insert(full.end(), args.begin(), args.end());
    return full;
  }

  std::string toptag_, dir_;
};

// A `toptag serve` child: started with a port file, stopped with SIGTERM (and waited for) however
// the stage ends.
class ServerProcess {
 public:
  ServerProcess(const Runner& runner, std::vector<std::string> args, const std::string& port_file_name) {
    const fs::path port_file = fs::path(runner.dir()) / port_file_name;
    fs::remove(port_file);
    args.insert(args.end(), {"--port-file", port_file_name});
    pid_ = runner.start(args);
    const auto deadline = Clock::now() + std::chrono::minutes(2);
    while (!fs::exists(port_file)) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        fail("toptag serve exited before it was ready");
      }
      if (Clock::now() > deadline) fail("toptag serve was not ready after 2 minutes");
      check_interrupted();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::ifstream in(port_file);
    const json ports = json::parse(in);
    grpc_port_ = ports.at("grpc").get<int>();
  }
  ~ServerProcess() {
    if (pid_ > 0) stop();
  }
  int stop() {
    kill(pid_, SIGTERM);
    const int code = wait_for(pid_);
    pid_ = -1;
    return code;
  }
  int grpc_port() const { return grpc_port_; }

 private:
  pid_t pid_ = -1;
  int grpc_port_ = 0;
};

std::string self_executable() {
  std::error_code e;
  const fs::path p = fs::read_symlink("/proc/self/exe", e);
  if (e) fail("cannot find the toptag executable (/proc/self/exe): {}", e.message());
  return p.string();
}

// The epochs a training run's metrics.json records.
int finished_epochs(const fs::path& run) {
  std::ifstream in(run / "metrics.json");
  const json j = json::parse(in, nullptr, false);
  return j.is_object() && j.contains("epochs") && j["epochs"].is_array() ? static_cast<int>(j["epochs"].size()) : 0;
}

// What every stage works with. Paths handed to toptag commands are relative to `dir` (they run
// there), except the --data files, which are absolute.
struct Study {
  const StudyOptions& o;
  fs::path dir;  // absolute
  Runner toptag;
  bool real;                     // --data: the reference files
  std::string train, val, test;  // the jet files
  bool limit;                    // --data with --jets: the first jets of each file only

  Study(const StudyOptions& options, const std::string& caller_cwd)
      : o(options),
        dir(fs::absolute(options.dir)),
        toptag(options.toptag.empty() ? self_executable() : options.toptag, dir.string()),
        real(!options.data_dir.empty()),
        limit(real && options.limit_data) {
    auto data = [&](const char* name) {
      return real ? fs::absolute(fs::path(caller_cwd) / o.data_dir / name).string() : std::string(name);
    };
    train = data("train.h5"), val = data("val.h5"), test = data("test.h5");
  }

  fs::path at(const std::string& relative) const { return dir / relative; }
  void make_dirs(const std::string& relative) const { fs::create_directories(at(relative)); }
  Args max_jets(int64_t n) const { return limit ? Args{"--max-jets", std::to_string(n)} : Args{}; }
  Args train_limit() const {
    return limit ? Args{"--max-train-jets", std::to_string(o.train_jets), "--max-val-jets", std::to_string(o.val_jets)}
                 : Args{};
  }
  Args model_args() const {
    return {"--arch",       o.arch,
            "--width",      std::to_string(o.width),
            "--hidden",     std::to_string(o.hidden),
            "--image-size", std::to_string(o.image_size)};
  }

  // Training with resume: an interrupted run continues from its last checkpoint. A run stopped by a
  // signal of its own exits 0 too: the stage is done only with every epoch in its metrics.
  void train_run(const std::string& out, const Args& args, int epochs) const {
    if (fs::exists(at(out) / "last.h5"))
      toptag.run({"train", "--resume", out, "--epochs", std::to_string(epochs)}, o.launcher);
    else
      toptag.run(Args{"train", "-o", out, "--epochs", std::to_string(epochs)} + args, o.launcher);
    const int done = finished_epochs(at(out));
    if (done < epochs) fail("training in {} stopped after {} of {} epochs; rerun to resume", out, done, epochs);
  }
};

void stage_data(const Study& s) {
  if (s.real) {
    for (const std::string& f : {s.train, s.val, s.test}) s.toptag.run({"info", f});
    return;
  }
  const StudyOptions& o = s.o;
  s.toptag.run({"generate", "-o", "train.h5", "--jets", std::to_string(o.train_jets), "--seed", "1", "--ttv", "0"});
  s.toptag.run({"generate", "-o", "val.h5", "--jets", std::to_string(o.val_jets), "--seed", "2", "--ttv", "2"});
  s.toptag.run({"generate", "-o", "test.h5", "--jets", std::to_string(o.test_jets), "--seed", "3", "--ttv", "1"});
}

void stage_train(const Study& s) {
  s.train_run("float", Args{"--train", s.train, "--val", s.val} + s.model_args() + s.train_limit(), s.o.epochs);
}

void stage_float(const Study& s) {
  s.make_dirs("predictions");
  s.toptag.run(Args{"predict", "-c", "float/best.h5", "-i", s.test, "-o", "predictions/float.h5"} +
               s.max_jets(s.o.test_jets));
}

void stage_quantize(const Study& s) {
  // Weights and activations, as Brainwave computes: the quantized and served models then run on
  // toptag's integer kernels (block floating point formats).
  Args quantize{"quantize", "-c", "float/best.h5", "--format", s.o.format, "--activations", "-o", "quantized.h5"};
  if (Format::parse(s.o.format).kind == FormatKind::int8) quantize = quantize + Args{"--calibration", s.train};
  s.toptag.run(quantize);
  s.toptag.run(Args{"predict", "-c", "quantized.h5", "-i", s.test, "-o", "predictions/quantized.h5"} +
               s.max_jets(s.o.test_jets));
}

void stage_finetune(const Study& s) {
  const StudyOptions& o = s.o;
  s.train_run("finetuned",
              Args{"--train", s.train, "--val", s.val, "--init", "quantized.h5", "--quantize", o.format,
                   "--quantize-activations", o.format, "--lr", fmt::format("{:g}", o.finetune_lr), "--image-size",
                   std::to_string(o.image_size)} +
                  s.train_limit(),
              o.finetune_epochs);
  s.toptag.run(Args{"predict", "-c", "finetuned/best.h5", "-i", s.test, "-o", "predictions/finetuned.h5"} +
               s.max_jets(o.test_jets));
}

void stage_serve(const Study& s) {
  const StudyOptions& o = s.o;
  s.make_dirs("features");
  s.make_dirs("perf");
  ServerProcess server(s.toptag,
                       {"serve", "-c", "finetuned/best.h5", "--host", "127.0.0.1", "--grpc-port",
                        std::to_string(o.serve_port), "--http-port", "-1", "--metrics-port", "-1"},
                       "serve_ports.json");
  const std::string url = fmt::format("grpc://127.0.0.1:{}", server.grpc_port());
  s.toptag.run(Args{"predict", "--server", url, "-i", s.test, "-o", "predictions/served.h5", "--concurrency", "16"} +
               s.max_jets(o.test_jets));
  for (const auto& [set, file, n] : {std::tuple{"train", s.train, o.train_jets}, std::tuple{"val", s.val, o.val_jets},
                                     std::tuple{"test", s.test, o.test_jets}})
    s.toptag.run(
        Args{"features", "--server", url, "-i", file, "-o", fmt::format("features/{}.h5", set), "--concurrency", "16"} +
        s.max_jets(n));
  s.toptag.run({"perf", "--server", url, "--concurrency", fmt::format("{}", fmt::join(o.concurrency, ",")),
                "--duration", o.perf_duration, "--csv", "perf/server.csv"});
  if (const int code = server.stop(); code != 0) fail("toptag serve exited with code {} on SIGTERM", code);
}

void stage_retune(const Study& s) {
  s.train_run("retuned",
              {"--features", "features/train.h5", "--val", "features/val.h5", "--init", "finetuned/best.h5", "--lr",
               fmt::format("{:g}", s.o.head_lr)},
              s.o.head_epochs);
  s.toptag.run({"predict", "-c", "retuned/best.h5", "-i", "features/test.h5", "-o", "predictions/served_retuned.h5"});
}

void stage_local_perf(const Study& s) {
  const int cpus = usable_cpus().count;
  const std::string threads = cpus > 1 ? fmt::format("1,{}", cpus) : "1";
  // The served (quantized, fine-tuned) model and the float one it came from.
  for (const auto& [checkpoint, csv] :
       {std::pair{"finetuned/best.h5", "perf/local.csv"}, std::pair{"float/best.h5", "perf/local_float.csv"}})
    s.toptag.run({"perf", "--local", "-c", checkpoint, "--batch", "1,32", "--threads", threads, "--duration",
                  s.o.perf_duration, "--csv", csv});
  // The paper's input, 224x224x3, timed on the same architecture untrained, quantized as the served
  // model and in float: the CPU rows of its Table 1.
  for (const auto& [format, csv] : {std::pair{s.o.format, std::string("perf/local_224x224x3.csv")},
                                    std::pair{std::string(), std::string("perf/local_224x224x3_float.csv")}}) {
    Args args{"perf", "--local",   "--arch", s.o.arch,     "--image-size",    "224",   "--channels", "3", "--batch",
              "1,32", "--threads", threads,  "--duration", s.o.perf_duration, "--csv", csv};
    if (!format.empty()) args = args + Args{"--format", format};
    s.toptag.run(args);
  }
}

// Enough resamples for the 2.5th and 97.5th percentiles (five resamples beyond each), few enough
// that the evaluate stage stays short: well under a second on 4000 test jets, about 3 s per model
// on 100k (so a minute or so for the five sets of the reference 404k).
constexpr int kBootstrapResamples = 200;

void stage_evaluate(const Study& s) {
  s.make_dirs("report");
  s.toptag.run({"eval",
                "-p",
                "predictions/float.h5",
                "predictions/quantized.h5",
                "predictions/finetuned.h5",
                "predictions/served.h5",
                "predictions/served_retuned.h5",
                "--names",
                "float,quantized,fine-tuned,served,served+retuned",
                "--json",
                "report/eval.json",
                "--plot",
                "report/roc.png",
                "--title",
                s.o.arch + " top tagger: float, " + s.o.format + ", served",
                "--roc-csv",
                "report/roc",
                "--reference",
                "predictions/finetuned.h5",
                "--bootstrap",
                std::to_string(kBootstrapResamples),
                "--seed",
                "1"});
}

struct Stage {
  const char* name;
  std::string (*what)(const StudyOptions&);
  void (*run)(const Study&);
};

// The study, in order. Each stage's `what` is printed when it starts.
const Stage kStages[] = {
    {"data",
     [](const StudyOptions& o) {
       return o.data_dir.empty() ? fmt::format("generate {} training, {} validation and {} test jets", o.train_jets,
                                               o.val_jets, o.test_jets)
                                 : "check the reference files in " + o.data_dir;
     },
     stage_data},
    {"train",
     [](const StudyOptions& o) {
       return fmt::format("train {} with the paper's recipe (Adam 1e-3, batch 64), {} epochs", o.arch, o.epochs);
     },
     stage_train},
    {"float", [](const StudyOptions&) { return std::string("predict the test set with the float model"); },
     stage_float},
    {"quantize",
     [](const StudyOptions& o) {
       return "quantize to " + o.format + " (batch norms folded) and predict, before fine-tuning";
     },
     stage_quantize},
    {"finetune",
     [](const StudyOptions& o) {
       return fmt::format("fine-tune the quantized model (lr {:g}, {} epoch(s)) and predict", o.finetune_lr,
                          o.finetune_epochs);
     },
     stage_finetune},
    {"serve",
     [](const StudyOptions&) {
       return std::string("serve the fine-tuned model; one-jet requests from 16 clients; throughput versus clients");
     },
     stage_serve},
    {"retune",
     [](const StudyOptions&) {
       return std::string("train the classifier head again on the served features, and predict from them");
     },
     stage_retune},
    {"local-perf",
     [](const StudyOptions& o) {
       return fmt::format(
           "in-process latency and throughput: 1 and {} threads, batch 1 and 32, at {}x{} and the paper's 224x224x3",
           usable_cpus().count, o.image_size, o.image_size);
     },
     stage_local_perf},
    {"evaluate",
     [](const StudyOptions&) {
       return std::string("evaluate all five prediction sets (served compared with the local fine-tuned model)");
     },
     stage_evaluate},
};

// Runs one stage unless its marker says it is done; returns its duration (this run's or the recorded one).
double run_stage(const Study& s, const Stage& stage, size_t index, size_t total) {
  const fs::path done = s.at("stages") / (std::string(stage.name) + ".done");
  if (fs::exists(done)) {
    std::ifstream in(done);
    const json d = json::parse(in, nullptr, false);
    const double seconds = d.is_object() ? d.value("seconds", 0.0) : 0.0;
    fmt::print("[{}/{}] {}: done earlier ({:.1f} s)\n", index, total, stage.name, seconds);
    return seconds;
  }
  fmt::print("\n[{}/{}] {}: {}\n", index, total, stage.name, stage.what(s.o));
  std::fflush(stdout);
  const auto t0 = Clock::now();
  try {
    stage.run(s);
  } catch (const Error& e) {
    if (interrupted) fail("study stage '{}' {}", stage.name, e.what());
    fail("study stage '{}' failed: {}\nfix it and rerun the same command: finished stages are kept", stage.name,
         e.what());
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  // Atomically: a half-written marker (a full disk) would make a rerun skip a stage it never finished.
  write_text_atomically(done.string(), json{{"seconds", seconds}}.dump() + "\n");
  fmt::print("[{}/{}] {}: done in {:.1f} s\n", index, total, stage.name, seconds);
  return seconds;
}

}  // namespace

void interrupt_study(int signal) {
  interrupted = 1;
  if (foreground > 0) kill(foreground, signal);
}

void run_study(const StudyOptions& o) {
  if (o.train_jets < 64 || o.val_jets < 10 || o.test_jets < 10)
    fail("--jets: need at least 64 training, 10 validation and 10 test jets");
  interrupted = 0;
  const Study s(o, fs::current_path().string());
  fs::create_directories(s.at("stages"));
  const auto study_start = Clock::now();
  std::vector<std::pair<std::string, double>> times;  // seconds per stage, in order
  const size_t total = std::size(kStages) + 1;
  for (size_t i = 0; i < std::size(kStages); ++i)
    times.emplace_back(kStages[i].name, run_stage(s, kStages[i], i + 1, total));

  fmt::print("\n[{}/{}] report: REPORT.md, metrics.json and plots\n", total, total);
  ReportInputs in;
  in.dir = s.dir.string();
  in.options = o;
  in.stage_seconds = times;
  write_report(in);
  fmt::print("\nstudy finished in {:.1f} s this run; report written to {}\n",
             std::chrono::duration<double>(Clock::now() - study_start).count(), (s.dir / "report").string());
}

}  // namespace toptag
