// The training workflow: resume equivalence, interrupt checkpoints, head-only training, schedules.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "datasets/generator.h"
#include "io/checkpoint.h"
#include "tagger/inference.h"
#include "testing.h"
#include "training/metrics_log.h"
#include "training/trainer.h"

namespace toptag {
namespace {

namespace fs = std::filesystem;

class TrainingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("toptag_training_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    GeneratorOptions g;
    g.seed = 11;
    generate_file((dir_ / "train.h5").string(), 256, g);
    g.seed = 12;
    generate_file((dir_ / "val.h5").string(), 128, g);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  TrainConfig tiny(const std::string& out) const {
    TrainConfig c;
    c.train_path = (dir_ / "train.h5").string();
    c.val_path = (dir_ / "val.h5").string();
    c.output_dir = (dir_ / out).string();
    c.arch = "resnet10";
    c.width = 4;
    c.hidden = 16;
    c.images.size = 16;
    c.batch_size = 32;
    c.epochs = 2;
    c.seed = 3;
    return c;
  }

  static void expect_same_weights(const std::string& a, const std::string& b) {
    std::unique_ptr<ResNet> ma = load_model(a), mb = load_model(b);
    StateList sa = ma->state(), sb = mb->state();
    for (size_t i = 0; i < sa.parameters.size(); ++i)
      testing::expect_close(sb.parameters[i].var->value(), sa.parameters[i].var->value(), sa.parameters[i].name, 0, 0);
    for (size_t i = 0; i < sa.buffers.size(); ++i)
      testing::expect_close(*sb.buffers[i].tensor, *sa.buffers[i].tensor, sa.buffers[i].name, 0, 0);
  }

  static fs::path dir_;
};

fs::path TrainingTest::dir_;

TEST_F(TrainingTest, ResumedAfterOneEpochEndsWithTheSameWeights) {
  TrainResult full = train(tiny("full"), nullptr);
  EXPECT_EQ(full.state.epoch, 2);
  TrainConfig first = tiny("split");
  first.epochs = 1;
  train(first, nullptr);
  EXPECT_EQ(read_train_config(resume_checkpoint_path(first.output_dir)).epochs, 1);
  TrainResult resumed = resume(resume_checkpoint_path(first.output_dir), first.output_dir, 2, nullptr);
  EXPECT_EQ(resumed.state.epoch, 2);
  expect_same_weights(full.last_checkpoint, resumed.last_checkpoint);
  // metrics.csv has a header and one row per epoch, across the resume.
  std::ifstream csv(fs::path(first.output_dir) / "metrics.csv");
  int lines = 0;
  for (std::string line; std::getline(csv, line);) ++lines;
  EXPECT_EQ(lines, 3);
  // metrics.json holds the same rows, the last one included.
  std::ifstream js(fs::path(first.output_dir) / "metrics.json");
  const nlohmann::json j = nlohmann::json::parse(js);
  ASSERT_EQ(j.at("epochs").size(), 2u);
  EXPECT_EQ(j["epochs"][1]["epoch"], 2);
  EXPECT_GT(j["epochs"][1]["val_auc"].get<double>(), 0.0);
  EXPECT_TRUE(fs::exists(fs::path(first.output_dir) / "best.h5"));
}

TEST_F(TrainingTest, InterruptWritesACheckpointAndResumingMidEpochMatches) {
  TrainResult full = train(tiny("full_mid"), nullptr);
  std::atomic<bool> stop{true};  // already set: the run stops after its first step
  TrainResult cut = train(tiny("cut"), &stop);
  EXPECT_TRUE(cut.interrupted);
  EXPECT_EQ(cut.state.epoch, 0);
  EXPECT_EQ(cut.state.step_in_epoch, 1);
  ASSERT_TRUE(fs::exists(cut.last_checkpoint));
  TrainResult resumed = resume(cut.last_checkpoint, tiny("cut").output_dir, 0, nullptr);
  EXPECT_FALSE(resumed.interrupted);
  expect_same_weights(full.last_checkpoint, resumed.last_checkpoint);
}

// The rows of DIR/metrics.json.
nlohmann::json logged_rows(const std::string& dir) {
  std::ifstream in(fs::path(dir) / "metrics.json");
  return nlohmann::json::parse(in).at("epochs");
}

// A number among a training checkpoint's /training attributes; nullopt when absent.
std::optional<double> training_attr(const std::string& checkpoint, const std::string& name) {
  H5Id file = h5_open(checkpoint);
  H5Id t = h5_group(file.get(), "training", false);
  return h5_attr_double(t.get(), name);
}

// A copy of `checkpoint` at `copy` whose /training group `edit` has changed.
std::string edited_copy(const std::string& checkpoint, const fs::path& copy, const std::function<void(hid_t)>& edit) {
  fs::copy_file(checkpoint, copy, fs::copy_options::overwrite_existing);
  H5Id file = h5_open(copy.string(), true);
  H5Id t = h5_group(file.get(), "training", false);
  edit(t.get());
  return copy.string();
}

// An epoch interrupted after any of its steps, its last one included, and resumed (as often as it
// was interrupted) logs the row the uninterrupted run logs: the checkpoint carries the epoch's
// running loss sum and seconds, and the lr logged is the schedule's at the epoch's last step.
TEST_F(TrainingTest, ResumedEpochsLogWhatTheUninterruptedRunLogs) {
  TrainConfig c = tiny("rows_full");
  c.schedule.kind = "cosine";  // the lr at an epoch's last step is not --lr
  train(c, nullptr);
  const nlohmann::json full = logged_rows(c.output_dir);
  c.output_dir = (dir_ / "rows_cut").string();
  std::atomic<bool> stop{true};  // every call below trains one step and stops
  TrainResult r = train(c, &stop);
  std::map<int64_t, double> stored_seconds;  // per epoch, at its last interrupt
  int64_t last_step_interrupted = 0;
  while (r.interrupted) {
    ASSERT_LT(r.state.epoch, 2);
    stored_seconds[r.state.epoch] = training_attr(r.last_checkpoint, "epoch_seconds").value_or(-1);
    if (r.state.epoch == 0) last_step_interrupted = r.state.step_in_epoch;
    // After every step of epoch 1, then after the first of epoch 2; then to the end.
    r = resume(r.last_checkpoint, c.output_dir, 0, r.state.epoch == 0 ? &stop : nullptr);
  }
  EXPECT_EQ(last_step_interrupted, 256 / 32) << "no interrupt after epoch 1's last step";
  const nlohmann::json cut = logged_rows(c.output_dir);
  ASSERT_EQ(cut.size(), 2u);
  ASSERT_EQ(full.size(), 2u);
  for (size_t e = 0; e < 2; ++e) {
    // The weights are bit-identical (the tests above), and so is every number computed from them.
    for (const auto& [key, value] : full[e].items())
      if (key != "seconds") {
        EXPECT_EQ(cut[e][key], value) << "epoch " << e + 1 << ": " << key;
      }
    // The epoch's seconds include the parts before its interrupts.
    EXPECT_GT(stored_seconds[static_cast<int64_t>(e)], 0) << "no epoch_seconds in the checkpoint";
    EXPECT_GE(cut[e]["seconds"].get<double>(), stored_seconds[static_cast<int64_t>(e)]) << "epoch " << e + 1;
  }
}

// A checkpoint from before the running sums still resumes, with a warning that the epoch's train
// metrics cover only the resumed steps; damaged sums are refused, naming the file and attribute.
TEST_F(TrainingTest, EpochSumsOfAnOldOrDamagedCheckpoint) {
  std::atomic<bool> stop{true};
  const TrainResult cut = train(tiny("sums"), &stop);  // one step into epoch 1
  ASSERT_EQ(cut.state.step_in_epoch, 1);
  const std::string old = edited_copy(cut.last_checkpoint, dir_ / "sums_old.h5", [](hid_t t) {
    for (const char* name : {"epoch_loss_sum", "epoch_loss_steps", "epoch_seconds"})
      ASSERT_GE(H5Adelete(t, name), 0) << name;
  });
  ::testing::internal::CaptureStderr();
  const TrainResult r = resume(old, (dir_ / "sums_old").string(), 0, nullptr);
  const std::string warnings = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(r.state.epoch, 2);
  EXPECT_NE(warnings.find("epoch 1's train_loss and seconds cover only the 7 steps after this resume"),
            std::string::npos)
      << warnings;

  struct Damage {
    const char* attribute;
    double value;
  };
  for (const Damage& d : {Damage{"epoch_seconds", NAN}, Damage{"epoch_seconds", -1}, Damage{"epoch_loss_sum", -1},
                          Damage{"epoch_loss_steps", -1}, Damage{"epoch_loss_steps", 2}}) {
    const std::string damaged = edited_copy(cut.last_checkpoint, dir_ / "sums_damaged.h5", [&](hid_t t) {
      if (std::string(d.attribute) == "epoch_loss_steps")
        h5_set_attr(t, d.attribute, static_cast<int64_t>(d.value));
      else
        h5_set_attr(t, d.attribute, d.value);
    });
    const std::string message =
        testing::error_of([&] { resume(damaged, (dir_ / "sums_damaged").string(), 0, nullptr); });
    EXPECT_NE(message.find(damaged), std::string::npos) << d.attribute << " " << d.value << ": " << message;
    EXPECT_NE(message.find(d.attribute), std::string::npos) << d.attribute << " " << d.value << ": " << message;
  }
}

// A metrics.json that a resume cannot trust (damaged, or another run's) is refused before any
// training, naming the file and the row or field; the checkpoint stays as it was.
TEST_F(TrainingTest, ResumeRefusesADamagedOrForeignLog) {
  TrainConfig c = tiny("log");
  c.epochs = 1;
  train(c, nullptr);
  const std::string checkpoint = resume_checkpoint_path(c.output_dir);
  std::ifstream in(fs::path(c.output_dir) / "metrics.json");
  const nlohmann::json good = nlohmann::json::parse(in);
  struct Case {
    const char* named;  // what the error must name
    std::function<void(nlohmann::json&)> damage;
  };
  const std::vector<Case> cases = {
      {"epoch", [](auto& j) { j["epochs"][0]["epoch"] = 1.9; }},
      {"epoch", [](auto& j) { j["epochs"][0]["epoch"] = 1e30; }},
      {"epoch", [](auto& j) { j["epochs"][0]["epoch"] = 0; }},
      {"epoch 2", [](auto& j) { j["epochs"][0]["epoch"] = 2; }},  // the checkpoint has finished 1
      {"epoch 1", [](auto& j) { j["epochs"].push_back(j["epochs"][0]); }},
      {"step", [](auto& j) { j["epochs"][0]["step"] = 7.5; }},
      {"lr", [](auto& j) { j["epochs"][0]["lr"] = nullptr; }},
      {"seconds", [](auto& j) { j["epochs"][0]["seconds"] = -1; }},
      {"train_loss", [](auto& j) { j["epochs"][0]["train_loss"] = "low"; }},
      {"val_auc", [](auto& j) { j["epochs"][0].erase("val_auc"); }},
      {"epochs", [](auto& j) { j["epochs"] = 3; }},
  };
  const fs::path out = dir_ / "log_damaged";
  fs::create_directories(out);
  const std::string log = (out / "metrics.json").string();
  for (const Case& k : cases) {
    nlohmann::json j = good;
    k.damage(j);
    std::ofstream(log) << j.dump();
    const std::string message = testing::error_of([&] { resume(checkpoint, out.string(), 2, nullptr); });
    EXPECT_NE(message.find(log), std::string::npos) << j.dump() << ": " << message;
    EXPECT_NE(message.find(k.named), std::string::npos) << j.dump() << ": " << message;
  }
  std::ofstream(log) << "{\"epochs\": [";
  EXPECT_NE(testing::error_of([&] { resume(checkpoint, out.string(), 2, nullptr); }).find(log), std::string::npos);

  // last.h5 of another architecture, put in the place of the log's own.
  TrainConfig other = tiny("log_other");
  other.epochs = 1;
  other.width = 8;
  train(other, nullptr);
  fs::copy_file(resume_checkpoint_path(other.output_dir), checkpoint, fs::copy_options::overwrite_existing);
  const std::string message = testing::error_of([&] { resume(checkpoint, c.output_dir, 2, nullptr); });
  EXPECT_NE(message.find((fs::path(c.output_dir) / "metrics.json").string()), std::string::npos) << message;
  EXPECT_NE(message.find("width"), std::string::npos) << message;
}

// What a log may hold: a diverged epoch's null metrics; and a log from before the run identity loads.
TEST_F(TrainingTest, ResumeKeepsALogWithNullMetricsOrNoRunIdentity) {
  TrainConfig c = tiny("log_ok");
  c.epochs = 1;
  train(c, nullptr);
  std::ifstream in(fs::path(c.output_dir) / "metrics.json");
  nlohmann::json j = nlohmann::json::parse(in);
  j.erase("run");
  j["epochs"][0]["val_auc"] = nullptr;
  j["epochs"][0]["train_loss"] = nullptr;
  std::ofstream(fs::path(c.output_dir) / "metrics.json") << j.dump();
  resume(resume_checkpoint_path(c.output_dir), c.output_dir, 2, nullptr);
  const nlohmann::json rows = logged_rows(c.output_dir);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_TRUE(rows[0]["val_auc"].is_null());
  EXPECT_EQ(rows[0]["step"], j["epochs"][0]["step"]);
}

// A run whose output directory cannot be written stops before its first step, naming the
// directory. /proc/self: a directory in which not even root can create a file.
TEST_F(TrainingTest, AnUnwritableOutputDirectoryStopsTheRunBeforeTraining) {
  if (!fs::is_directory("/proc/self")) GTEST_SKIP() << "no /proc/self";
  std::atomic<bool> stop{true};
  const std::string checkpoint = train(tiny("writable"), &stop).last_checkpoint;
  TrainConfig c = tiny("unused");
  c.output_dir = "/proc/self";
  for (const std::string& message : {testing::error_of([&] { train(c, &stop); }),
                                     testing::error_of([&] { resume(checkpoint, "/proc/self", 0, &stop); })})
    EXPECT_NE(message.find("/proc/self is not writable"), std::string::npos) << message;
}

// The checkpoint is the record of a run: a metrics log that cannot be written, or a run that
// diverges, never costs an epoch's checkpoint or stops the run.
TEST_F(TrainingTest, ADivergedRunOrABrokenLogStillSavesEveryEpoch) {
  TrainConfig diverged = tiny("diverged");
  diverged.epochs = 1;
  diverged.lr = 1e38;  // weights overflow to inf within the epoch
  const TrainResult d = train(diverged, nullptr);
  EXPECT_EQ(d.state.epoch, 1);
  EXPECT_TRUE(fs::exists(d.last_checkpoint));
  std::ifstream js(fs::path(diverged.output_dir) / "metrics.json");
  const nlohmann::json j = nlohmann::json::parse(js);
  ASSERT_EQ(j.at("epochs").size(), 1u);
  EXPECT_TRUE(j["epochs"][0]["val_auc"].is_null()) << j.dump();

  TrainConfig blocked = tiny("blocked");
  blocked.epochs = 1;
  fs::create_directories(fs::path(blocked.output_dir) / "metrics.json");  // the log cannot be replaced
  const TrainResult b = train(blocked, nullptr);
  EXPECT_EQ(read_train_state(b.last_checkpoint).epoch, 1);
}

TEST_F(TrainingTest, FrozenBackboneChangesOnlyTheHead) {
  TrainConfig base = tiny("base");
  base.epochs = 1;
  train(base, nullptr);
  TrainConfig head = tiny("head");
  head.epochs = 1;
  head.init_path = (fs::path(base.output_dir) / "last.h5").string();
  head.freeze_backbone = true;
  train(head, nullptr);
  std::unique_ptr<ResNet> before = load_model(head.init_path),
                          after = load_model((fs::path(head.output_dir) / "last.h5").string());
  StateList sb = before->state(), sa = after->state();
  for (size_t i = 0; i < sb.parameters.size(); ++i) {
    const bool is_head = sb.parameters[i].name.rfind("fc", 0) == 0;
    const float* x = sb.parameters[i].var->value().data();
    const float* y = sa.parameters[i].var->value().data();
    bool same = std::equal(x, x + sb.parameters[i].var->value().numel(), y);
    EXPECT_EQ(same, !is_head) << sb.parameters[i].name;
  }
  for (size_t i = 0; i < sb.buffers.size(); ++i)  // running statistics untouched too
    testing::expect_close(*sa.buffers[i].tensor, *sb.buffers[i].tensor, sb.buffers[i].name, 0, 0);
}

TEST_F(TrainingTest, ConfigurationErrors) {
  TrainConfig c = tiny("bad");
  c.epochs = 0;
  EXPECT_THROW(train(c, nullptr), Error);
  c = tiny("bad");
  c.schedule.kind = "triangle";
  EXPECT_THROW(train(c, nullptr), Error);
  c = tiny("bad");
  c.features_path = c.train_path;  // --features without --init
  EXPECT_THROW(train(c, nullptr), Error);
}

// A model whose classifier overflows float32 (every logit inf, every softmax NaN) on any input.
void make_overflow(ResNet& model) {
  for (auto& [name, linear] : model.linears()) {
    if (name == "fc1") linear->bias.value().fill(10.0f);  // every hidden unit at least ~10 after ReLU
    if (name == "fc2") linear->weight.value().fill(3e38f);
  }
}

TEST_F(TrainingTest, NonFiniteOutputsAreAnErrorNamingTheModelAndTheJet) {
  ResNet model(ResNetConfig{"resnet10", 1, 4, 16, 2}, 5);
  make_overflow(model);
  const JetFile val((dir_ / "val.h5").string());
  ImageOptions images;
  images.size = 16;
  InferenceOptions io;
  io.show_progress = false;
  io.model = "model overflow.h5";
  try {
    run_inference(model, val, images, io);
    ADD_FAILURE() << "NaN scores were handed out";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("model overflow.h5"), std::string::npos) << m;
    EXPECT_NE(m.find("NaN or inf logits for jet 0 of " + val.path()), std::string::npos) << m;
  }
  FeatureSet set{Tensor::empty({3, model.feature_dim()}), {0, 1, 0}, "features.h5"};
  set.features.fill(0.5f);
  try {
    run_head(model, set, io);
    ADD_FAILURE() << "NaN scores were handed out by the head";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("jet 0 of features.h5"), std::string::npos) << e.what();
  }
  io.keep_non_finite = true;  // training's validation: a diverged run still gets (NaN) metrics
  const InferenceResult r = run_inference(model, val, images, io);
  ASSERT_GT(r.predictions.size(), 0);
  EXPECT_TRUE(std::isnan(r.predictions.score[0]));
}

// Every stored key comes back: a field missing from the key table would keep its default here.
TEST(TrainConfigJson, EveryFieldSurvivesTheRoundTrip) {
  TrainConfig c;
  int changed = 0;
  // Give each field a value other than its default, through the same table the JSON uses.
  for_each_field(c, [&](const char*, auto& member) {
    using T = std::remove_reference_t<decltype(member)>;
    if constexpr (std::is_same_v<T, std::string>)
      member += "x";
    else if constexpr (std::is_same_v<T, bool>)
      member = !member;
    else
      member = static_cast<T>(member + 3);
    ++changed;
  });
  EXPECT_GE(changed, 30);
  // And set a few directly, as a flag would: a key left out of the table loses these.
  c.eval_batch_size = 77, c.calibration_batches = 5, c.images.size = 64, c.ste = "identity";
  const TrainConfig back = TrainConfig::from_json(c.to_json(), "test");
  EXPECT_EQ(back.to_json(), c.to_json());
  EXPECT_EQ(back.images.size, c.images.size);
  EXPECT_EQ(back.eval_batch_size, c.eval_batch_size);
  EXPECT_EQ(back.calibration_batches, c.calibration_batches);
  EXPECT_EQ(back.ste, c.ste);
  EXPECT_THROW(TrainConfig::from_json(R"({"lr": "fast"})", "test"), Error);
}

TEST(MetricsLogTest, ResumeKeepsTheFinishedEpochsAndWritesBothFilesFromMemory) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("toptag_metrics_{}", ::getpid());
  fs::create_directories(dir);
  TrainConfig run;
  run.output_dir = dir.string();
  MetricsLog log(run);
  for (int64_t e = 1; e <= 3; ++e) log.record(EpochMetrics{e, e * 10, 1e-3, 0.5, 0.4, 0.8, 0.9, 20.0, 1.0});
  MetricsLog resumed(run);
  // The checkpoint had finished two epochs: the log's third is not its own.
  EXPECT_NE(testing::error_of([&] { resumed.load(2); }).find("row 3: epoch 3 is past the 2 epoch(s)"),
            std::string::npos);
  log.record(EpochMetrics{2, 20, 1e-3, 0.5, 0.4, 0.8, 0.9, 20.0, 1.0});  // drops the third row
  resumed.load(2);
  ASSERT_EQ(resumed.rows().size(), 2u);
  resumed.record(EpochMetrics{3, 31, 1e-3, 0.3, 0.3, 0.85, 0.95, 30.0, 1.0});
  std::ifstream csv(dir / "metrics.csv");
  int lines = 0;
  for (std::string line; std::getline(csv, line);) ++lines;
  EXPECT_EQ(lines, 4);  // header + 3 epochs, no duplicate
  std::ifstream js(dir / "metrics.json");
  const nlohmann::json j = nlohmann::json::parse(js);
  ASSERT_EQ(j.at("epochs").size(), 3u);
  EXPECT_EQ(j["epochs"][2]["step"], 31);
  fs::remove_all(dir);
}

TEST(Schedule, ShapesOfTheSchedules) {
  ScheduleOptions o;
  EXPECT_DOUBLE_EQ(learning_rate(1e-3, o, 500, 100, 1000), 1e-3);
  o.kind = "step";
  o.step_epochs = 2;
  o.gamma = 0.5;
  EXPECT_DOUBLE_EQ(learning_rate(1.0, o, 199, 100, 1000), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(1.0, o, 200, 100, 1000), 0.5);
  EXPECT_DOUBLE_EQ(learning_rate(1.0, o, 450, 100, 1000), 0.25);
  o.kind = "cosine";
  EXPECT_DOUBLE_EQ(learning_rate(1.0, o, 0, 100, 1000), 1.0);
  EXPECT_NEAR(learning_rate(1.0, o, 500, 100, 1000), 0.5, 1e-12);
  EXPECT_NEAR(learning_rate(1.0, o, 1000, 100, 1000), 0.0, 1e-12);
  o.kind = "constant";
  o.warmup_steps = 10;
  EXPECT_DOUBLE_EQ(learning_rate(1.0, o, 0, 100, 1000), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(1.0, o, 9, 100, 1000), 1.0);
}

}  // namespace
}  // namespace toptag
