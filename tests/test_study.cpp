// toptag study, the README's main job, in a tiny version (few jets, a small model, one epoch) through
// the same command: every report file exists, every metric is a number in range, a rerun resumes
// instead of redoing, and a failing stage stops the study with its name.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct CommandResult {
  int code;
  std::string output;
};

CommandResult toptag(const std::string& args) {
  const std::string command = std::string(TOPTAG_EXE) + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return {-1, "popen failed"};
  std::string out;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof buffer, pipe)) out.append(buffer, n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

const std::string kTiny =
    "--jets 400,150,200 --epochs 1 --finetune-epochs 1 --head-epochs 1 --arch resnet10 --width 4 --hidden 16 "
    "--image-size 16 --concurrency 1,4 --perf-duration 200ms";

class StudyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(fs::temp_directory_path() / ("toptag_study_" + std::to_string(getpid())));
    fs::remove_all(*dir_);
    setenv("TOPTAG_PLAIN_PROGRESS", "1", 1);
    first_ = new CommandResult(toptag("study -o " + dir_->string() + " " + kTiny));
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
    delete first_;
  }
  static fs::path* dir_;
  static CommandResult* first_;
};
fs::path* StudyTest::dir_ = nullptr;
CommandResult* StudyTest::first_ = nullptr;

TEST_F(StudyTest, WritesEveryReportFile) {
  ASSERT_EQ(first_->code, 0) << first_->output;
  for (const char* f :
       {"REPORT.md", "metrics.json", "eval.json", "roc.png", "throughput_vs_clients.png", "training.png"}) {
    const fs::path p = *dir_ / "report" / f;
    ASSERT_TRUE(fs::exists(p)) << p;
    EXPECT_GT(fs::file_size(p), 100u) << p;
  }
  // The commands are printed as a user would type them.
  EXPECT_NE(first_->output.find("$ toptag quantize -c float/best.h5 --format ms-fp8 --activations"), std::string::npos);
  EXPECT_NE(first_->output.find("report written to"), std::string::npos);
}

TEST_F(StudyTest, EveryMetricIsANumberInRange) {
  ASSERT_EQ(first_->code, 0) << first_->output;
  std::ifstream in(*dir_ / "report" / "metrics.json");
  const json m = json::parse(in);
  const std::vector<std::string> names = {"float", "quantized", "fine-tuned", "served", "served+retuned"};
  ASSERT_EQ(m.at("models").size(), names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    const json& model = m["models"][i];
    EXPECT_EQ(model.at("name"), names[i]);
    EXPECT_EQ(model.at("n_signal").get<int64_t>() + model.at("n_background").get<int64_t>(), 200);
    for (const char* k : {"accuracy", "auc"}) {
      const double v = model.at(k).get<double>();
      EXPECT_TRUE(v >= 0 && v <= 1) << names[i] << " " << k << " = " << v;
    }
    for (const char* eps : {"0.3", "0.5"}) {
      const json& r = model.at("rejection").at(eps);
      // 1/eps_B >= 1, or null (infinite: no QCD jet passes) on a tiny test set.
      if (!r.is_null()) {
        EXPECT_GE(r.get<double>(), 1.0) << names[i] << " at " << eps;
      }
    }
  }
  // The served model is the local fine-tuned one: scores agree to float rounding.
  const json& d = m.at("served_vs_local");
  EXPECT_LE(d.at("max_abs_diff").get<double>(), 1e-6);
  EXPECT_EQ(d.at("flip_fraction").get<double>(), 0.0);
  const json& perf = m.at("performance");
  ASSERT_EQ(perf.at("server").size(), 2u);
  // 1 and all threads x batch 1 and 32 (1 thread twice on one core), for the served model, the float
  // one, and the architecture at 224x224x3 in both precisions.
  for (const char* mode : {"local", "local_float", "local_224x224x3", "local_224x224x3_float"})
    ASSERT_EQ(perf.at(mode).size(), 4u) << mode;
  for (const char* mode : {"local", "server", "local_float", "local_224x224x3", "local_224x224x3_float"})
    for (const json& p : perf.at(mode)) {
      EXPECT_GT(p.at("throughput").get<double>(), 0) << mode;
      EXPECT_GT(p.at("p50_ms").get<double>(), 0) << mode;
      EXPECT_EQ(p.at("errors").get<int64_t>(), 0) << mode;
    }
  ASSERT_EQ(m.at("training").at("float").size(), 1u);
  const double auc = m["training"]["float"][0].at("val_auc").get<double>();
  EXPECT_TRUE(auc >= 0 && auc <= 1);
  for (const char* stage :
       {"data", "train", "float", "quantize", "finetune", "serve", "retune", "local-perf", "evaluate"})
    EXPECT_GE(m.at("stage_seconds").at(stage).get<double>(), 0) << stage;
  // The report's table holds the same numbers as eval.json.
  std::ifstream md_in(*dir_ / "report" / "REPORT.md");
  std::stringstream md;
  md << md_in.rdbuf();
  // Each figure is rounded to two significant digits of its 68% interval's width.
  const json& served_auc = m["models"][3]["bootstrap"]["auc"];
  const double ci_width = served_auc["ci68"][1].get<double>() - served_auc["ci68"][0].get<double>();
  const int decimals = ci_width > 0 ? std::clamp(1 - static_cast<int>(std::floor(std::log10(ci_width))), 0, 6) : 4;
  char auc_text[32];
  std::snprintf(auc_text, sizeof auc_text, "| %.*f [", decimals, m["models"][3]["auc"].get<double>());
  EXPECT_NE(md.str().find(std::string("| served (gRPC, one jet per request) | ")), std::string::npos);
  // Table 1 has float and ms-fp8 rows at both sizes, and the quantized model ran on integer kernels.
  for (const char* row : {"| CPU, 1 thread, 16x16 | float32 | 1 |", "| CPU, 1 thread, 16x16 | ms-fp8 | 1 |",
                          "| CPU, 1 thread, 224x224x3 | float32 | 1 |", "| CPU, 1 thread, 224x224x3 | ms-fp8 | 1 |"})
    EXPECT_NE(md.str().find(row), std::string::npos) << row;
  EXPECT_NE(first_->output.find("on integer kernels"), std::string::npos);
  EXPECT_NE(md.str().find(auc_text), std::string::npos) << "served AUC " << auc_text << " missing from REPORT.md";
}

// 200 test jets: every figure comes with its bootstrap interval, and the report says in one sentence
// per model whether it can be told apart from float at this test-set size.
TEST_F(StudyTest, ReportGivesIntervalsAndSaysWhatIsDistinguishable) {
  ASSERT_EQ(first_->code, 0) << first_->output;
  std::ifstream in(*dir_ / "report" / "metrics.json");
  const json m = json::parse(in);
  for (const json& model : m.at("models")) {
    const json& b = model.at("bootstrap");
    EXPECT_EQ(b.at("resamples").get<int>(), 200);
    for (const json* u : {&b.at("auc"), &b.at("accuracy"), &b.at("rejection").at("0.3"), &b.at("rejection").at("0.5")})
      for (const char* k : {"value", "std", "ci68", "ci95"}) EXPECT_TRUE(u->contains(k)) << k << " in " << *u;
    const double auc = model.at("auc").get<double>();
    const json& ci = b.at("auc").at("ci95");
    EXPECT_LE(ci[0].get<double>(), auc);
    EXPECT_GE(ci[1].get<double>(), auc);
  }
  const json& comparisons = m.at("comparisons");
  ASSERT_EQ(comparisons.size(), 4u);  // each model against float
  std::ifstream md_in(*dir_ / "report" / "REPORT.md");
  std::stringstream md;
  md << md_in.rdbuf();
  const std::string report = md.str();
  EXPECT_NE(report.find("68% interval"), std::string::npos) << report;
  for (const json& c : comparisons) {
    EXPECT_EQ(c.at("reference"), "float");
    EXPECT_TRUE(c.at("paired").get<bool>()) << c;  // the same test jets in the same order
    const std::string sentence = c.at("summary");
    EXPECT_NE(report.find("- " + sentence), std::string::npos) << sentence << " not in\n" << report;
    EXPECT_NE(sentence.find(c.at("distinguishable").get<bool>() ? " differ in "
                                                                : " are not distinguishable at this test-set size"),
              std::string::npos)
        << sentence;
  }
  // The served model is the fine-tuned one: float against it and against fine-tuned read the same.
  EXPECT_EQ(comparisons[1].at("distinguishable"), comparisons[2].at("distinguishable"));
  // The table's cells carry an interval: "| served (gRPC, one jet per request) | 0.81 [0.78, 0.84] | ...".
  const size_t row = report.find("| served (gRPC, one jet per request) | ");
  ASSERT_NE(row, std::string::npos);
  const std::string line = report.substr(row, report.find('\n', row) - row);
  EXPECT_GE(std::count(line.begin(), line.end(), '['), 4) << line;
}

TEST_F(StudyTest, RerunResumesFromFinishedStages) {
  ASSERT_EQ(first_->code, 0) << first_->output;
  const auto stamp = fs::last_write_time(*dir_ / "float" / "best.h5");
  fs::remove(*dir_ / "stages" / "evaluate.done");
  const CommandResult again = toptag("study -o " + dir_->string() + " " + kTiny);
  ASSERT_EQ(again.code, 0) << again.output;
  EXPECT_NE(again.output.find("train: done earlier"), std::string::npos) << again.output;
  EXPECT_EQ(again.output.find("$ toptag train"), std::string::npos) << "training was redone";
  EXPECT_NE(again.output.find("$ toptag eval"), std::string::npos) << "the unfinished stage did not rerun";
  EXPECT_EQ(fs::last_write_time(*dir_ / "float" / "best.h5"), stamp);
}

// SIGTERM in the middle (whatever stage is running) stops the study with a message and a non-zero
// status, leaves no server behind, and the same command then finishes the study.
TEST(Study, InterruptedStudyResumes) {
  const fs::path dir = fs::temp_directory_path() / ("toptag_study_int_" + std::to_string(getpid()));
  fs::remove_all(dir);
  const fs::path log = dir.string() + ".log";
  const std::string command =
      std::string(TOPTAG_EXE) + " study -o " + dir.string() + " " + kTiny + " > " + log.string() + " 2>&1";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", ("exec " + command).c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // Wait until the study is past its first stage, then stop it.
  for (int i = 0; i < 600 && !fs::exists(dir / "stages" / "data.done"); ++i) usleep(50000);
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  std::ifstream in(log);
  std::stringstream out;
  out << in.rdbuf();
  ASSERT_TRUE(WIFEXITED(status)) << out.str();
  EXPECT_NE(WEXITSTATUS(status), 0) << out.str();
  EXPECT_NE(out.str().find("interrupted; rerun the same command to resume"), std::string::npos) << out.str();
  EXPECT_FALSE(fs::exists(dir / "stages" / "evaluate.done"));
  const CommandResult again = toptag("study -o " + dir.string() + " " + kTiny);
  EXPECT_EQ(again.code, 0) << again.output;
  EXPECT_NE(again.output.find("data: done earlier"), std::string::npos) << again.output;
  EXPECT_TRUE(fs::exists(dir / "report" / "REPORT.md"));
  fs::remove_all(dir);
  fs::remove(log);
}

TEST(Study, AFailingStageStopsWithItsName) {
  const fs::path dir = fs::temp_directory_path() / ("toptag_study_bad_" + std::to_string(getpid()));
  const fs::path data = dir / "data";
  fs::create_directories(data);
  std::ofstream(data / "train.h5") << "not an HDF5 file";
  const CommandResult r = toptag("study -o " + (dir / "s").string() + " --data " + data.string() + " " + kTiny);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("study stage 'data' failed"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("train.h5"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "s" / "stages" / "data.done"));
  fs::remove_all(dir);
}

}  // namespace
