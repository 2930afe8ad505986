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

#include "nn/check.h"
#include "nn/parallel.h"
#include "study/report.h"

extern char** environ;

namespace toptag {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;

// SIGINT and SIGTERM while the study runs: passed on to the command running in the foreground (a
// training run writes its checkpoint), after which the study stops; rerunning resumes.
volatile std::sig_atomic_t interrupted = 0;
volatile pid_t foreground = 0;

extern "C" void forward_signal(int signal) {
  interrupted = 1;
  if (foreground > 0) kill(foreground, signal);
}

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

pid_t spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (const int e = posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ); e != 0)
    fail("cannot start {}: {}", args[0], std::strerror(e));
  return pid;
}

int wait_for(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) fail("waitpid failed: {}", std::strerror(errno));
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

// One toptag command, printed as a user would type it, with its output passed through.
class Runner {
 public:
  Runner(std::string toptag, std::string dir) : toptag_(std::move(toptag)), dir_(std::move(dir)) {}

  void run(const std::vector<std::string>& args) const {
    fmt::print("$ toptag {}\n", quoted(args));
    std::fflush(stdout);
    check_interrupted();
    foreground = spawn(command(args));
    const int code = wait_for(foreground);
    foreground = 0;
    check_interrupted();
    if (code != 0) fail("'toptag {}' failed with exit code {} (in {})", quoted(args), code, dir_);
  }
  pid_t start(const std::vector<std::string>& args) const {
    fmt::print("$ toptag {} &\n", quoted(args));
    std::fflush(stdout);
    return spawn(command(args));
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
  ServerProcess(const Runner& runner, std::vector<std::string> args, const std::string& port_file) {
    fs::remove(port_file);
    args.insert(args.end(), {"--port-file", port_file});
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

}  // namespace

void run_study(const StudyOptions& o) {
  if (o.train_jets < 64 || o.val_jets < 10 || o.test_jets < 10)
    fail("--jets: need at least 64 training, 10 validation and 10 test jets");
  fs::create_directories(fs::path(o.dir) / "stages");
  const fs::path dir = fs::absolute(o.dir);
  const Runner toptag(o.toptag.empty() ? self_executable() : o.toptag, dir.string());
  const std::string cwd = fs::current_path().string();
  fs::current_path(dir);  // every path below is relative to the study directory
  struct Restore {
    std::string cwd;
    ~Restore() { fs::current_path(cwd); }
  } restore{cwd};

  const bool real = !o.data_dir.empty();
  auto data = [&](const char* name) {
    return real ? fs::absolute(fs::path(cwd) / o.data_dir / name).string() : std::string(name);
  };
  const std::string train = data("train.h5"), val = data("val.h5"), test = data("test.h5");
  // Subsets of the reference files (generated files have the requested sizes already).
  const bool limit = real && o.limit_data;
  const std::vector<std::string> train_limit =
      limit ? std::vector<std::string>{"--max-train-jets", std::to_string(o.train_jets), "--max-val-jets",
                                       std::to_string(o.val_jets)}
            : std::vector<std::string>{};
  auto max_jets = [&](int64_t n) {
    return limit ? std::vector<std::string>{"--max-jets", std::to_string(n)} : std::vector<std::string>{};
  };
  const std::string size = std::to_string(o.image_size);
  const std::string threads = std::to_string(hardware_threads());
  auto concurrency = [&] { return fmt::format("{}", fmt::join(o.concurrency, ",")); };
  const std::vector<std::string> model_args{
      "--arch", o.arch, "--width", std::to_string(o.width), "--hidden", std::to_string(o.hidden), "--image-size", size};
  auto with = [](std::vector<std::string> a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  // Training with resume: an interrupted run continues from its last checkpoint.
  auto train_run = [&](const std::string& out, const std::vector<std::string>& args, int epochs) {
    if (fs::exists(fs::path(out) / "last.h5"))
      toptag.run({"train", "--resume", out, "--epochs", std::to_string(epochs)});
    else
      toptag.run(with({"train", "-o", out, "--epochs", std::to_string(epochs)}, args));
    // A run stopped by a signal of its own exits 0 too: the stage is done only with every epoch.
    std::ifstream csv(fs::path(out) / "metrics.csv");
    int rows = -1;  // the header
    for (std::string line; std::getline(csv, line);) ++rows;
    if (rows < epochs)
      fail("training in {} stopped after {} of {} epochs; rerun to resume", out, std::max(rows, 0), epochs);
  };

  struct Stage {
    std::string name, what;
    std::function<void()> run;
  };
  const std::vector<Stage> stages = {
      {"data",
       real
           ? "check the reference files in " + o.data_dir
           : fmt::format("generate {} training, {} validation and {} test jets", o.train_jets, o.val_jets, o.test_jets),
       [&] {
         if (real) {
           for (const std::string& f : {train, val, test}) toptag.run({"info", f});
           return;
         }
         toptag.run(
             {"generate", "-o", "train.h5", "--jets", std::to_string(o.train_jets), "--seed", "1", "--ttv", "0"});
         toptag.run({"generate", "-o", "val.h5", "--jets", std::to_string(o.val_jets), "--seed", "2", "--ttv", "2"});
         toptag.run({"generate", "-o", "test.h5", "--jets", std::to_string(o.test_jets), "--seed", "3", "--ttv", "1"});
       }},
      {"train", fmt::format("train {} with the paper's recipe (Adam 1e-3, batch 64), {} epochs", o.arch, o.epochs),
       [&] {
         train_run("float", with(with({"--train", train, "--val", val}, model_args), train_limit), o.epochs);
       }},
      {"float", "predict the test set with the float model",
       [&] {
         fs::create_directories("predictions");
         toptag.run(
             with({"predict", "-c", "float/best.h5", "-i", test, "-o", "predictions/float.h5"}, max_jets(o.test_jets)));
       }},
      {"quantize", "quantize to " + o.format + " (batch norms folded) and predict, before fine-tuning",
       [&] {
         toptag.run({"quantize", "-c", "float/best.h5", "--format", o.format, "-o", "quantized.h5"});
         toptag.run(with({"predict", "-c", "quantized.h5", "-i", test, "-o", "predictions/quantized.h5"},
                         max_jets(o.test_jets)));
       }},
      {"finetune",
       fmt::format("fine-tune the quantized model (lr {:g}, {} epoch(s)) and predict", o.finetune_lr,
                   o.finetune_epochs),
       [&] {
         train_run("finetuned",
                   with({"--train", train, "--val", val, "--init", "quantized.h5", "--quantize", o.format, "--lr",
                         fmt::format("{:g}", o.finetune_lr), "--image-size", size},
                        train_limit),
                   o.finetune_epochs);
         toptag.run(with({"predict", "-c", "finetuned/best.h5", "-i", test, "-o", "predictions/finetuned.h5"},
                         max_jets(o.test_jets)));
       }},
      {"serve", "serve the fine-tuned model; one-jet requests from 16 clients; throughput versus clients",
       [&] {
         fs::create_directories("features");
         fs::create_directories("perf");
         ServerProcess server(toptag,
                              {"serve", "-c", "finetuned/best.h5", "--host", "127.0.0.1", "--grpc-port",
                               std::to_string(o.serve_port), "--http-port", "-1", "--metrics-port", "-1"},
                              "serve_ports.json");
         const std::string url = fmt::format("grpc://127.0.0.1:{}", server.grpc_port());
         toptag.run(with({"predict", "--server", url, "-i", test, "-o", "predictions/served.h5", "--concurrency", "16"},
                         max_jets(o.test_jets)));
         for (const auto& [set, file, n] : {std::tuple{"train", train, o.train_jets},
                                            std::tuple{"val", val, o.val_jets}, std::tuple{"test", test, o.test_jets}})
           toptag.run(with({"features", "--server", url, "-i", file, "-o", fmt::format("features/{}.h5", set),
                            "--concurrency", "16"},
                           max_jets(n)));
         toptag.run({"perf", "--server", url, "--concurrency", concurrency(), "--duration", o.perf_duration, "--csv",
                     "perf/server.csv"});
         if (const int code = server.stop(); code != 0) fail("toptag serve exited with code {} on SIGTERM", code);
       }},
      {"retune", "train the classifier head again on the served features, and predict from them",
       [&] {
         train_run("retuned",
                   {"--features", "features/train.h5", "--val", "features/val.h5", "--init", "finetuned/best.h5",
                    "--lr", fmt::format("{:g}", o.head_lr)},
                   o.head_epochs);
         toptag.run(
             {"predict", "-c", "retuned/best.h5", "-i", "features/test.h5", "-o", "predictions/served_retuned.h5"});
       }},
      {"local-perf", "in-process latency and throughput: 1 and " + threads + " threads, batch 1 and 32",
       [&] {
         toptag.run({"perf", "--local", "-c", "finetuned/best.h5", "--batch", "1,32", "--threads",
                     fmt::format("1,{}", threads), "--duration", o.perf_duration, "--csv", "perf/local.csv"});
       }},
      {"evaluate", "evaluate all five prediction sets (served compared with the local fine-tuned model)",
       [&] {
         fs::create_directories("report");
         toptag.run({"eval", "-p", "predictions/float.h5", "predictions/quantized.h5", "predictions/finetuned.h5",
                     "predictions/served.h5", "predictions/served_retuned.h5", "--names",
                     "float,quantized,fine-tuned,served,served+retuned", "--json", "report/eval.json", "--plot",
                     "report/roc.png", "--title", o.arch + " top tagger: float, " + o.format + ", served", "--roc-csv",
                     "report/roc", "--reference", "predictions/finetuned.h5"});
       }},
  };

  std::signal(SIGINT, forward_signal);
  std::signal(SIGTERM, forward_signal);
  struct DefaultSignals {
    ~DefaultSignals() {
      std::signal(SIGINT, SIG_DFL);
      std::signal(SIGTERM, SIG_DFL);
    }
  } default_signals;
  const auto study_start = Clock::now();
  std::vector<std::pair<std::string, double>> times;  // seconds per stage, in order
  const size_t total = stages.size() + 1;
  for (size_t i = 0; i < stages.size(); ++i) {
    const Stage& s = stages[i];
    const fs::path done = fs::path("stages") / (s.name + ".done");
    if (fs::exists(done)) {
      std::ifstream in(done);
      const json d = json::parse(in, nullptr, false);
      const double seconds = d.is_object() ? d.value("seconds", 0.0) : 0.0;
      times.emplace_back(s.name, seconds);
      fmt::print("[{}/{}] {}: done earlier ({:.1f} s)\n", i + 1, total, s.name, seconds);
      continue;
    }
    fmt::print("\n[{}/{}] {}: {}\n", i + 1, total, s.name, s.what);
    std::fflush(stdout);
    const auto t0 = Clock::now();
    try {
      s.run();
    } catch (const Error& e) {
      if (interrupted) fail("study stage '{}' {}", s.name, e.what());
      fail("study stage '{}' failed: {}\nfix it and rerun the same command: finished stages are kept", s.name,
           e.what());
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    times.emplace_back(s.name, seconds);
    std::ofstream(done) << json{{"seconds", seconds}}.dump() << "\n";
    fmt::print("[{}/{}] {}: done in {:.1f} s\n", i + 1, total, s.name, seconds);
  }

  fmt::print("\n[{}/{}] report: REPORT.md, metrics.json and plots\n", total, total);
  ReportInputs in;
  in.dir = dir.string();
  in.options = o;
  in.stage_seconds = times;
  write_report(in);
  fmt::print("\nstudy finished in {:.1f} s this run; report written to {}\n",
             std::chrono::duration<double>(Clock::now() - study_start).count(), (dir / "report").string());
}

}  // namespace toptag
