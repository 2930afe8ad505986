// The paper's metrics on hand-computed cases, and prediction files.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "eval/plot.h"
#include "eval/report.h"
#include "testing.h"

namespace toptag {
namespace {

namespace fs = std::filesystem;

TEST(Metrics, AccuracyCountsScoresAboveOneHalfAsTop) {
  const std::vector<float> s = {0.9f, 0.6f, 0.5f, 0.2f};
  const std::vector<int64_t> l = {1, 0, 1, 0};
  // 0.9 -> top (right), 0.6 -> top (wrong), 0.5 -> QCD (wrong: > 0.5 is required), 0.2 -> QCD (right).
  EXPECT_DOUBLE_EQ(accuracy(s, l), 0.5);
}

double auc_of(std::vector<float> scores, std::vector<int64_t> labels) {
  return auc(scores, labels);
}

TEST(Metrics, AucOnHandComputedCases) {
  // Perfect, inverted and random-looking classifiers.
  EXPECT_DOUBLE_EQ((auc_of(std::vector<float>{0.9f, 0.8f, 0.1f, 0.2f}, std::vector<int64_t>{1, 1, 0, 0})), 1.0);
  EXPECT_DOUBLE_EQ((auc_of(std::vector<float>{0.1f, 0.2f, 0.9f, 0.8f}, std::vector<int64_t>{1, 1, 0, 0})), 0.0);
  // Signal {0.8, 0.4}, background {0.6, 0.2}: pairs (0.8>0.6, 0.8>0.2, 0.4<0.6, 0.4>0.2) -> 3/4.
  EXPECT_DOUBLE_EQ((auc_of(std::vector<float>{0.8f, 0.4f, 0.6f, 0.2f}, std::vector<int64_t>{1, 1, 0, 0})), 0.75);
  // Ties count one half: all scores equal -> 0.5.
  EXPECT_DOUBLE_EQ((auc_of(std::vector<float>{0.3f, 0.3f, 0.3f}, std::vector<int64_t>{1, 0, 0})), 0.5);
  // Signal {0.7, 0.5}, background {0.5, 0.1}: 1 + 1 + 0.5 (tie) + 1 = 3.5 of 4.
  EXPECT_DOUBLE_EQ((auc_of(std::vector<float>{0.7f, 0.5f, 0.5f, 0.1f}, std::vector<int64_t>{1, 1, 0, 0})), 0.875);
}

TEST(Metrics, AucMatchesTheQuadraticDefinitionOnRandomData) {
  Rng rng(3);
  std::vector<float> s(500);
  std::vector<int64_t> l(500);
  for (size_t i = 0; i < s.size(); ++i) {
    l[i] = static_cast<int64_t>(rng.below(2));
    s[i] = static_cast<float>(std::round((rng.uniform() + 0.3 * l[i]) * 20) / 20);  // many ties
  }
  double pairs = 0, count = 0;
  for (size_t i = 0; i < s.size(); ++i)
    for (size_t j = 0; j < s.size(); ++j)
      if (l[i] == 1 && l[j] == 0) pairs += s[i] > s[j] ? 1.0 : (s[i] == s[j] ? 0.5 : 0.0), count += 1;
  EXPECT_NEAR(auc(s, l), pairs / count, 1e-12);
}

TEST(Metrics, RocCurveAndInterpolatedRejection) {
  // Signal scores 0.9, 0.7, 0.5, 0.3; background 0.8, 0.6, 0.4, 0.2, 0.1.
  const std::vector<float> s = {0.9f, 0.7f, 0.5f, 0.3f, 0.8f, 0.6f, 0.4f, 0.2f, 0.1f};
  const std::vector<int64_t> l = {1, 1, 1, 1, 0, 0, 0, 0, 0};
  const std::vector<RocPoint> roc = roc_curve(s, l);
  ASSERT_EQ(roc.size(), 10u);
  EXPECT_DOUBLE_EQ(roc[0].eps_s, 0.0);
  EXPECT_DOUBLE_EQ(roc[1].eps_s, 0.25);  // threshold 0.9
  EXPECT_DOUBLE_EQ(roc[1].eps_b, 0.0);
  EXPECT_DOUBLE_EQ(roc[2].eps_b, 0.2);  // threshold 0.8
  EXPECT_DOUBLE_EQ(roc.back().eps_s, 1.0);
  EXPECT_DOUBLE_EQ(roc.back().eps_b, 1.0);
  // eps_S = 0.3 lies between (0.25, eps_B 0.2) at threshold 0.8 and (0.5, eps_B 0.2) at 0.7:
  // eps_B = 0.2 -> rejection 5.
  EXPECT_DOUBLE_EQ(background_efficiency_at(roc, 0.3), 0.2);
  EXPECT_DOUBLE_EQ(rejection_at(roc, 0.3), 5.0);
  // eps_S = 0.6: between (0.5, 0.4) at threshold 0.6 and (0.75, 0.4) at 0.5: eps_B 0.4.
  EXPECT_NEAR(background_efficiency_at(roc, 0.6), 0.4, 1e-12);
  // eps_S = 0.125: halfway between (0, 0) and (0.25, 0): eps_B = 0, rejection infinite.
  EXPECT_TRUE(std::isinf(rejection_at(roc, 0.125)));
  // A case where interpolation matters: (0.25, 0) -> (0.25, 0.2) -> (0.5, 0.2); eps_S 0.875 lies
  // between (0.75, 0.6) and (1.0, 0.8) after threshold 0.3 -> (1.0, 0.6)... check against the line.
  const double lo_s = 0.75, lo_b = roc[6].eps_b, hi_s = 1.0, hi_b = roc[7].eps_b;
  EXPECT_NEAR(background_efficiency_at(roc, 0.875), lo_b + 0.5 * (hi_b - lo_b), 1e-12);
  EXPECT_DOUBLE_EQ(roc[6].eps_s, lo_s);
  EXPECT_DOUBLE_EQ(roc[7].eps_s, hi_s);
}

TEST(Metrics, BadPredictionsAreRejected) {
  const std::vector<float> s = {0.1f, 0.9f};
  const std::vector<int64_t> one_class = {1, 1}, bad_label = {1, 2}, short_labels = {1}, ok = {1, 0};
  const std::vector<float> nan_score = {NAN, 0.5f};
  EXPECT_THROW(auc(s, one_class), Error);
  EXPECT_THROW(auc(s, bad_label), Error);
  EXPECT_THROW(auc(s, short_labels), Error);
  EXPECT_THROW(auc(nan_score, ok), Error);
}

TEST(Predictions, RoundTripInBothFormatsAndReportErrors) {
  Predictions p;
  p.score = {0.25f, 0.123456789f, 1.0f};
  p.label = {0, 1, 1};
  const fs::path dir = fs::temp_directory_path() / ("toptag_pred_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  for (const char* name : {"p.h5", "p.csv"}) {
    write_predictions((dir / name).string(), p);
    Predictions q = read_predictions((dir / name).string());
    EXPECT_EQ(q.score, p.score) << name;
    EXPECT_EQ(q.label, p.label) << name;
  }
  std::ofstream(dir / "bad.csv") << "score,label\n0.5,1\nabc,0\n";
  try {
    read_predictions((dir / "bad.csv").string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("line 3"), std::string::npos) << e.what();
  }
  std::ofstream(dir / "header.csv") << "prob\n0.5\n";
  EXPECT_THROW(read_predictions((dir / "header.csv").string()), Error);
  fs::remove_all(dir);
}

TEST(Report, JsonHasExactlyThePapersFieldsAndAPlotIsDrawn) {
  Predictions p;
  Rng rng(1);
  for (int i = 0; i < 400; ++i) {
    p.label.push_back(i % 2);
    p.score.push_back(static_cast<float>(std::clamp(0.5 + 0.3 * (i % 2 ? 1 : -1) + 0.3 * rng.normal(), 0.0, 1.0)));
  }
  ModelEval m = evaluate("float", p, {0.3, 0.5}, 10);
  ASSERT_TRUE(m.spread);
  EXPECT_GT(m.spread->auc, 0);
  const std::string json = eval_json({m});
  for (const char* key : {"\"models\"", "\"name\": \"float\"", "\"n_signal\": 200", "\"n_background\": 200",
                          "\"accuracy\"", "\"auc\"", "\"0.3\"", "\"0.5\""})
    EXPECT_NE(json.find(key), std::string::npos) << key << " in " << json;
  const fs::path png = fs::temp_directory_path() / ("toptag_roc_" + std::to_string(::getpid()) + ".png");
  plot_roc(png.string(), {m, evaluate("again", p, {0.3})});
  ASSERT_TRUE(fs::exists(png));
  EXPECT_GT(fs::file_size(png), 1000u);
  fs::remove(png);
  EXPECT_THROW(plot_roc("roc.gif", {m}), Error);
}

// Titles, model names and paths reach gnuplot as quoted strings: a quote or a newline in them cannot
// end the string and run a command (gnuplot's system()). Today's main ran every one of these.
TEST(Report, PlotTextCannotRunCommands) {
  Predictions p;
  for (int i = 0; i < 100; ++i)
    p.label.push_back(i % 2), p.score.push_back(static_cast<float>(i % 2) * 0.5f + 0.01f * i);
  const fs::path dir = fs::temp_directory_path() / ("toptag_plot_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path marker = dir / "pwned";
  const std::string command = "system('touch " + marker.string() + "')";
  const std::vector<std::string> hostile = {"a'; " + command + "; x='", "a\n" + command + "\nx", "a''" + command};
  for (const std::string& text : hostile) {
    ModelEval m = evaluate(text, p, {0.3});
    plot_roc((dir / "roc.png").string(), {m}, text);
    EXPECT_TRUE(fs::exists(dir / "roc.png")) << text;
    EXPECT_FALSE(fs::exists(marker)) << "gnuplot ran a command from: " << text;
    try {
      plot_roc((dir / ("r'; " + command + "; x='.png")).string(), {m});
    } catch (const Error&) {  // the odd path may be refused; it must not run anything
    }
    EXPECT_FALSE(fs::exists(marker)) << "gnuplot ran a command from a path";
  }
  EXPECT_EQ(gnuplot_string("it's\na"), "'it''s a'");
  fs::remove_all(dir);
}

TEST(Report, ComparisonWithAReference) {
  Predictions a, b;
  a.score = {0.2f, 0.6f, 0.9f};
  b.score = {0.2f, 0.4f, 0.8f};
  Comparison c = compare(a, b, "a");
  EXPECT_NEAR(c.max_abs_diff, 0.2, 1e-6);
  EXPECT_NEAR(c.mean_abs_diff, 0.1, 1e-6);
  EXPECT_NEAR(c.flip_fraction, 1.0 / 3.0, 1e-12);
  b.score.pop_back();
  EXPECT_THROW(compare(a, b, "a"), Error);
}

}  // namespace
}  // namespace toptag
