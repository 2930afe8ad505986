// The paper's metrics on hand-computed cases, and prediction files.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

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
  ASSERT_TRUE(m.uncertainty);
  EXPECT_GT(m.uncertainty->auc.std, 0);
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

// A tagger whose score separates top from QCD by `separation` standard deviations, on n jets (half top).
Predictions gaussian_tagger(int n, double separation, uint64_t seed) {
  Rng rng(seed);
  Predictions p;
  for (int i = 0; i < n; ++i) {
    p.label.push_back(i % 2);
    p.score.push_back(static_cast<float>(1.0 / (1.0 + std::exp(-(separation * (i % 2 ? 0.5 : -0.5) + rng.normal())))));
  }
  return p;
}

double width(const Interval& i) {
  return i.hi - i.lo;
}

TEST(Bootstrap, IntervalsHoldTheValueAndWidenAsTheTestSetShrinks) {
  const Predictions big = gaussian_tagger(4000, 2.0, 7);
  Predictions small = big;
  small.score.resize(400);
  small.label.resize(400);
  const ModelEval b = evaluate("big", big, {0.3, 0.5}, 200, 1);
  const ModelEval s = evaluate("small", small, {0.3, 0.5}, 200, 1);
  ASSERT_TRUE(b.uncertainty && s.uncertainty);
  for (const ModelEval* m : {&b, &s}) {
    const ModelUncertainty& u = *m->uncertainty;
    EXPECT_EQ(u.replicates.auc.size(), 200u);
    std::vector<const Uncertainty*> all = {&u.accuracy, &u.auc};
    for (const Uncertainty& r : u.rejection) all.push_back(&r);
    for (const Uncertainty* x : all) {
      EXPECT_TRUE(x->ci95.contains(x->value)) << m->name << " " << x->value;
      EXPECT_TRUE(x->ci68.contains(x->value)) << m->name << " " << x->value;
      EXPECT_LE(x->ci95.lo, x->ci68.lo);
      EXPECT_GE(x->ci95.hi, x->ci68.hi);
      EXPECT_GT(width(x->ci68), 0) << m->name;
    }
  }
  // Ten times fewer jets: intervals about sqrt(10) ~ 3 times wider.
  EXPECT_GT(width(s.uncertainty->auc.ci95), 2 * width(b.uncertainty->auc.ci95));
  EXPECT_GT(width(s.uncertainty->accuracy.ci95), 2 * width(b.uncertainty->accuracy.ci95));
  EXPECT_GT(width(s.uncertainty->rejection[1].ci68), 2 * width(b.uncertainty->rejection[1].ci68));
  // The standard deviation agrees with the 68% interval's half-width for a near-normal statistic.
  EXPECT_NEAR(b.uncertainty->auc.std, width(b.uncertainty->auc.ci68) / 2, 0.3 * b.uncertainty->auc.std);
}

TEST(Bootstrap, KnownAnswersHaveZeroWidth) {
  // Perfect: every resample has AUC 1, accuracy 1, and no QCD jet above any top jet (1/eps_B infinite).
  Predictions perfect;
  for (int i = 0; i < 200; ++i) {
    perfect.label.push_back(i % 2);
    perfect.score.push_back(i % 2 ? 0.9f : 0.1f);
  }
  const ModelEval p = evaluate("perfect", perfect, {0.3}, 50, 1);
  EXPECT_EQ(p.uncertainty->auc.ci95.lo, 1.0);
  EXPECT_EQ(p.uncertainty->auc.ci95.hi, 1.0);
  EXPECT_EQ(p.uncertainty->auc.std, 0.0);
  EXPECT_EQ(p.uncertainty->accuracy.ci68.lo, 1.0);
  EXPECT_TRUE(std::isinf(p.uncertainty->rejection[0].ci95.lo));
  EXPECT_TRUE(std::isinf(p.uncertainty->rejection[0].std));
  // All scores equal: AUC 1/2, eps_B = eps_S. Resamples keep the class counts (stratified), so accuracy
  // (every jet called QCD: 130 of 200) and 1/eps_B(50%) = 2 do not move either.
  Predictions flat;
  for (int i = 0; i < 200; ++i) {
    flat.label.push_back(i < 70);
    flat.score.push_back(0.5f);
  }
  const ModelEval f = evaluate("flat", flat, {0.5}, 50, 1);
  for (const Uncertainty* u : {&f.uncertainty->auc, &f.uncertainty->accuracy, &f.uncertainty->rejection[0]}) {
    EXPECT_EQ(u->ci95.lo, u->value);
    EXPECT_EQ(u->ci95.hi, u->value);
  }
  EXPECT_DOUBLE_EQ(f.uncertainty->auc.value, 0.5);
  EXPECT_DOUBLE_EQ(f.uncertainty->accuracy.value, 0.65);
  EXPECT_DOUBLE_EQ(f.uncertainty->rejection[0].value, 2.0);
}

TEST(Bootstrap, PercentilesOfSetsHoldingInfinity) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  const std::vector<double> v = {3, inf, 1, 2};
  EXPECT_DOUBLE_EQ(percentile(v, 0.0), 1.0);
  EXPECT_DOUBLE_EQ(percentile(v, 0.5), 2.5);  // between 2 and 3
  EXPECT_DOUBLE_EQ(percentile(v, 0.6), 2.8);
  EXPECT_EQ(percentile(v, 1.0), inf);
  EXPECT_EQ(percentile(v, 0.95), inf);        // between 3 and inf, nearer inf
  EXPECT_DOUBLE_EQ(percentile(v, 0.7), 3.0);  // between 3 and inf, nearer 3
  EXPECT_EQ(percentile({-inf, inf}, 0.4), -inf);
  const Uncertainty u = summarize(5.0, {4, 5, 6, inf});
  EXPECT_TRUE(std::isinf(u.std));
  EXPECT_EQ(u.ci95.hi, inf);
  EXPECT_DOUBLE_EQ(u.ci95.lo, 4.075);
  // Both infinite in a resample: no difference, not NaN.
  const Difference d = difference(inf, {inf, inf, 10}, inf, {inf, 20, 10}, true);
  EXPECT_EQ(d.value, 0.0);
  EXPECT_EQ(d.ci95.lo, 0.0);
  EXPECT_EQ(d.ci95.hi, inf);
  EXPECT_FALSE(d.distinguishable());
  EXPECT_EQ(format_value(inf, 1), "inf");
  EXPECT_EQ(format_value(-inf, 1, true), "-inf");
  EXPECT_EQ(format_value(57.3, 0, true), "+57");
}

TEST(Bootstrap, SameSeedSameIntervalsAndTheSeedMatters) {
  const Predictions p = gaussian_tagger(600, 1.5, 3);
  const ModelEval a = evaluate("a", p, {0.3}, 100, 5), b = evaluate("b", p, {0.3}, 100, 5);
  const ModelEval c = evaluate("c", p, {0.3}, 100, 6);
  EXPECT_EQ(a.uncertainty->replicates.auc, b.uncertainty->replicates.auc);
  EXPECT_EQ(a.uncertainty->rejection[0].ci95.hi, b.uncertainty->rejection[0].ci95.hi);
  EXPECT_NE(a.uncertainty->replicates.auc, c.uncertainty->replicates.auc);
  // Resample b depends on b alone: 100 resamples start with the same 50 as 50 resamples.
  const ModelEval half = evaluate("half", p, {0.3}, 50, 5);
  EXPECT_TRUE(std::equal(half.uncertainty->replicates.auc.begin(), half.uncertainty->replicates.auc.end(),
                         a.uncertainty->replicates.auc.begin()));
}

TEST(Bootstrap, PairedComparisonSeparatesRealDifferencesFromNoise) {
  const Predictions reference = gaussian_tagger(2000, 1.5, 11);
  // The same tagger with a few jets scored again (20 of 2000, drawn from the same distribution).
  Predictions nearly = reference;
  const Predictions rescored = gaussian_tagger(2000, 1.5, 12);
  for (int i = 0; i < 20; ++i) nearly.score[i] = rescored.score[i];
  // A clearly better tagger on the same jets: the same noise, a larger separation.
  Predictions better = reference;
  for (size_t i = 0; i < better.score.size(); ++i) {
    const double logit = std::log(reference.score[i] / (1.0 - reference.score[i]));
    better.score[i] = static_cast<float>(1.0 / (1.0 + std::exp(-(logit + (better.label[i] ? 0.3 : -0.3)))));
  }
  const std::vector<double> eps = {0.3, 0.5};
  const ModelEval r = evaluate("float", reference, eps, 200, 1);
  const ModelEval n = evaluate("nearly", nearly, eps, 200, 1);
  const ModelEval b = evaluate("better", better, eps, 200, 1);
  ASSERT_TRUE(same_labels(nearly, reference));
  const BootstrapComparison same = compare_bootstrap(n, r, true);
  EXPECT_FALSE(same.distinguishable()) << comparison_sentence(same);
  EXPECT_NE(comparison_sentence(same).find("nearly and float are not distinguishable at this test-set size: "
                                           "1/eps_B(30%) differs by"),
            std::string::npos)
      << comparison_sentence(same);
  const BootstrapComparison diff = compare_bootstrap(b, r, true);
  EXPECT_TRUE(diff.auc.distinguishable()) << comparison_sentence(diff);
  EXPECT_TRUE(diff.rejection[1].second.distinguishable()) << comparison_sentence(diff);
  EXPECT_NE(comparison_sentence(diff).find("better and float differ in "), std::string::npos)
      << comparison_sentence(diff);
  // Pairing cancels the jets' common fluctuations: the paired interval of the AUC difference is much
  // narrower than the unpaired one (which adds both sets' variances).
  const BootstrapComparison unpaired = compare_bootstrap(b, r, false);
  EXPECT_LT(2 * width(diff.auc.ci95), width(unpaired.auc.ci95));
  EXPECT_NE(comparison_sentence(unpaired).find("unpaired"), std::string::npos);
  // Different jets cannot be paired.
  Predictions other = reference;
  std::swap(other.label[0], other.label[1]);
  EXPECT_FALSE(same_labels(other, reference));
}

TEST(Bootstrap, TableAndJsonShowTheIntervals) {
  Predictions perfect;
  for (int i = 0; i < 100; ++i) {
    perfect.label.push_back(i % 2);
    perfect.score.push_back(i % 2 ? 0.8f : 0.2f);
  }
  const Predictions noisy = gaussian_tagger(100, 1.0, 2);
  const ModelEval a = evaluate("float", noisy, {0.3}, 20), b = evaluate("perfect", perfect, {0.3}, 20);
  const std::string table = eval_table({a, b});
  for (const char* row : {"\n  68%", "\n  95%", "\n  +-", "[1.0000, 1.0000]", "[inf, inf]"})
    EXPECT_NE(table.find(row), std::string::npos) << row << " in\n" << table;
  const std::string json = eval_json({a, b}, {compare_bootstrap(b, a, false)});
  for (const char* key :
       {"\"bootstrap\"", "\"resamples\": 20", "\"stratified\": true", "\"value\"", "\"std\": \"inf\"", "\"ci68\"",
        "\"ci95\"", "\"comparisons\"", "\"paired\": false", "\"distinguishable\"", "\"summary\": \"perfect and float"})
    EXPECT_NE(json.find(key), std::string::npos) << key << " in " << json;
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
