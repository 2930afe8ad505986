// toptag export: every kind of checkpoint becomes an ONNX model that ONNX's checker accepts and that an
// independent runtime, OpenCV's dnn module, runs to the probabilities and features toptag predict
// computes; a Triton repository whose config.pbtxt, parsed back with Triton's model_config.proto,
// matches the model; and errors that name what is wrong.
#include <fmt/format.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <opencv2/core.hpp>
#include <opencv2/dnn.hpp>
#include <set>

#include "datasets/generator.h"
#include "export/onnx_export.h"
#include "export/onnx_graph.h"
#include "export/triton.h"
#include "io/config_json.h"
#include "model_config.pb.h"
#include "tagger/inference.h"
#include "testing.h"
#include "training/trainer.h"

namespace toptag {
namespace {

// Named error limits (docs/STYLE.md): the bound on the probabilities, and the features judged
// against their largest value (float summation order differs between the two runtimes).
constexpr double kProbabilityTolerance = 1e-4;
constexpr double kFeatureTolerance = 1e-4;
// A score this close to 0 or 1 is saturated: it would agree whatever the graph computed before the
// softmax. Every model compared has some scores away from that.
constexpr double kSaturated = 1e-3;

constexpr int64_t kJets = 10;
constexpr int kImageSize = 24;
// Training-mode passes that set the batch norms' running statistics from the images (momentum 0.1:
// 0.9^30 of the initial statistics remains), so that the folded model is well scaled.
constexpr int kStatisticPasses = 30;

// The plain operators the graph may use (export/onnx_export.h).
const std::set<std::string> kPlainOperators = {
    "Conv",    "Relu",           "MaxPool",         "Add", "GlobalAveragePool", "Flatten", "Gemm",
    "Softmax", "QuantizeLinear", "DequantizeLinear"};

struct Outputs {
  std::vector<float> scores;  // probability of top, per jet
  Tensor probabilities;       // (N, 2), ONNX only
  Tensor features;            // (N, F)
};

class Export : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::filesystem::temp_directory_path() / ("toptag_export_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    GeneratorOptions g;
    g.seed = 31;
    jets_ = (dir_ / "jets.h5").string();
    generate_file(jets_, kJets, g);
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }

  static std::string path(const std::string& name) { return (dir_ / name).string(); }

  static ImageOptions images_of(int64_t channels) {
    ImageOptions o;
    o.size = kImageSize;
    o.channels = static_cast<int>(channels);
    return o;
  }

  static Tensor jet_images(const ImageOptions& options) { return read_all_images(JetFile(jets_), options).images; }

  // A randomly initialised tagger whose batch norms hold the statistics of the test images and
  // gamma, beta away from 1, 0 (so that folding them matters), saved as a float checkpoint.
  static Tagger random_tagger(const ResNetConfig& config, uint64_t seed) {
    Tagger t;
    t.model = std::make_unique<ResNet>(config, seed);
    t.images = images_of(config.in_channels);
    t.training_config = fields_to_json(t.images).dump();
    const Tensor images = jet_images(t.images);
    NoGradGuard no_grad;
    t.model->set_training(true);
    for (int i = 0; i < kStatisticPasses; ++i) t.model->forward(Var(images));
    t.model->set_training(false);
    Rng rng(seed + 1);
    for (auto& p : t.model->state().parameters)
      if (p.name.find("bn") != std::string::npos || p.name.find("downsample.1") != std::string::npos)
        for (float& v : p.var->value().span()) v += static_cast<float>(0.2 * rng.normal());
    return t;
  }

  // Quantizes as toptag quantize does (int8 activations calibrated on the test images).
  static void quantize(Tagger& t, const std::string& weights, const std::string& activations) {
    auto config = std::make_shared<QuantizationConfig>(make_quantization(weights, activations, "masked"));
    bool given = false;
    const Tensor images = jet_images(t.images);
    quantize_tagger(t, config, [&]() -> std::optional<Tensor> {
      if (given) return std::nullopt;
      given = true;
      return images;
    });
  }

  // What toptag predict and toptag features compute from the checkpoint, through their own functions.
  static Outputs toptag_outputs(const std::string& checkpoint) {
    Tagger t = load_tagger(checkpoint);
    freeze_for_inference(t);
    JetFile file(jets_);
    InferenceOptions io;
    io.show_progress = false;
    io.batch_size = 4;
    Outputs out;
    out.scores = run_inference(*t.model, file, t.images, io).predictions.score;
    std::vector<float> features;
    run_featurizer(*t.model, file, t.images, io, [&](const Tensor& f, const std::vector<int64_t>&) {
      features.insert(features.end(), f.data(), f.data() + f.numel());
    });
    const int64_t n = static_cast<int64_t>(out.scores.size());
    out.features = Tensor::from({n, static_cast<int64_t>(features.size()) / n}, features);
    return out;
  }

  // OpenCV's dnn module with its own CPU implementation of every layer.
  static cv::dnn::Net opencv_net(const std::string& onnx_path) {
    cv::dnn::Net net = cv::dnn::readNetFromONNX(onnx_path);
    net.setPreferableBackend(cv::dnn::DNN_BACKEND_OPENCV);
    net.setPreferableTarget(cv::dnn::DNN_TARGET_CPU);
    return net;
  }

  static Tensor to_tensor(const cv::Mat& m) {
    EXPECT_EQ(m.type(), CV_32F);
    EXPECT_TRUE(m.isContinuous());
    std::vector<int64_t> dims(m.size.p, m.size.p + m.dims);
    return Tensor::from(Shape(dims), std::span<const float>(m.ptr<float>(), m.total()));
  }

  // The named tensors for images (N, C, H, W), computed by `net`.
  static std::vector<Tensor> opencv_forward(cv::dnn::Net& net, const Tensor& images,
                                            const std::vector<std::string>& names) {
    std::vector<int> sizes;
    for (int64_t d : images.shape().dims()) sizes.push_back(static_cast<int>(d));
    cv::Mat blob(static_cast<int>(sizes.size()), sizes.data(), CV_32F, const_cast<float*>(images.data()));
    net.setInput(blob, kImagesTensor);
    std::vector<cv::Mat> mats;
    net.forward(mats, std::vector<cv::String>(names.begin(), names.end()));
    std::vector<Tensor> out;
    for (const cv::Mat& m : mats) out.push_back(to_tensor(m));
    return out;
  }

  // Both outputs, asked for by name.
  static Outputs opencv_outputs(cv::dnn::Net& net, const Tensor& images) {
    const std::vector<Tensor> t = opencv_forward(net, images, {kProbabilitiesTensor, kFeaturesTensor});
    Outputs out;
    out.probabilities = t.at(0);
    out.features = t.at(1);
    for (int64_t i = 0; i < out.probabilities.dim(0); ++i) out.scores.push_back(out.probabilities.data()[i * 2 + 1]);
    return out;
  }

  // Rows [begin, begin + count) of images.
  static Tensor rows(const Tensor& t, int64_t begin, int64_t count) {
    Shape shape = t.shape();
    shape[0] = count;
    const int64_t per = t.numel() / t.dim(0);
    return Tensor::from(shape, std::span<const float>(t.data() + begin * per, static_cast<size_t>(count * per)));
  }

  // Exports the checkpoint, checks the model, runs OpenCV on the whole batch and on smaller batches
  // (the batch dimension is dynamic), and compares with toptag predict. Returns max |diff| of the
  // probabilities.
  static double expect_runtime_agreement(const std::string& checkpoint, const std::string& onnx_path,
                                         OnnxExport* exported_out = nullptr) {
    Tagger t = load_tagger(checkpoint);
    const ImageOptions images = t.images;
    const int64_t feature_dim = t.model->feature_dim();
    OnnxExport exported = export_onnx(t, checkpoint);
    EXPECT_NO_THROW(check_onnx(exported.model, onnx_path));
    write_onnx(onnx_path, exported.model);
    for (const std::string& op : onnx_operators(exported.model))
      EXPECT_TRUE(kPlainOperators.count(op)) << "operator " << op << " is not among the plain ones";

    const Outputs want = toptag_outputs(checkpoint);
    const Tensor all = jet_images(images);
    EXPECT_EQ(all.dim(0), kJets);
    EXPECT_TRUE(std::any_of(want.scores.begin(), want.scores.end(),
                            [](float s) { return s > kSaturated && s < 1 - kSaturated; }))
        << checkpoint << ": every score saturated, the comparison would prove nothing";

    double worst = 0;
    cv::dnn::Net net = opencv_net(onnx_path);
    for (const auto& [begin, count] : {std::pair<int64_t, int64_t>{0, kJets}, {0, 1}, {1, 3}}) {
      const Outputs got = opencv_outputs(net, rows(all, begin, count));
      EXPECT_EQ(got.probabilities.shape(), (Shape{count, 2}));
      EXPECT_EQ(got.features.shape(), (Shape{count, feature_dim}));
      if (got.probabilities.shape() != Shape{count, 2} || got.features.shape() != Shape{count, feature_dim}) break;
      for (int64_t i = 0; i < count; ++i) {
        const double p0 = got.probabilities.data()[i * 2], p1 = got.probabilities.data()[i * 2 + 1];
        const double score = want.scores[static_cast<size_t>(begin + i)];
        worst = std::max({worst, std::abs(p1 - score), std::abs(p0 - (1 - score))});
      }
      testing::expect_close_to_max(got.features, rows(want.features, begin, count), checkpoint + " features",
                                   kFeatureTolerance);
    }
    EXPECT_LE(worst, kProbabilityTolerance) << checkpoint;
    if (exported_out) *exported_out = std::move(exported);
    return worst;
  }

  static std::filesystem::path dir_;
  static std::string jets_;
};

std::filesystem::path Export::dir_;
std::string Export::jets_;

// ---- every checkpoint kind, a small ResNet and ResNet-50 -------------------------------------------

struct Kind {
  const char* name;
  ResNetConfig config;
  const char* weights;      // "" = float
  const char* activations;  // "" = float
};

class ExportKinds : public Export, public ::testing::WithParamInterface<Kind> {};

TEST_P(ExportKinds, CheckerAcceptsAndOpenCvAgreesWithPredict) {
  const Kind& k = GetParam();
  Tagger t = random_tagger(k.config, 41);
  if (*k.weights) quantize(t, k.weights, k.activations);
  const std::string checkpoint = path(std::string(k.name) + ".h5");
  save_tagger(checkpoint, t);

  OnnxExport exported;
  const double worst = expect_runtime_agreement(checkpoint, path(std::string(k.name) + ".onnx"), &exported);
  std::fprintf(stderr, "%s: max |p_opencv - p_toptag| = %.3g\n", k.name, worst);

  // Int8 activations are carried exactly: one QuantizeLinear/DequantizeLinear pair per conv and Gemm.
  Tagger loaded = load_tagger(checkpoint);
  const int64_t layers = static_cast<int64_t>(loaded.model->convs().size() + loaded.model->linears().size());
  int64_t quantize_nodes = 0;
  for (const auto& n : exported.model.graph().node()) quantize_nodes += n.op_type() == "QuantizeLinear";
  const bool int8_activations = std::string(k.activations) == "int8";
  EXPECT_EQ(quantize_nodes, int8_activations ? layers : 0);
  EXPECT_TRUE(exported.warnings.empty());
  EXPECT_EQ(onnx_metadata(exported.model, "weight_format"), *k.weights ? Format::parse(k.weights).str() : "float32");
  EXPECT_EQ(onnx_metadata(exported.model, "activation_quantization").rfind(int8_activations ? "exact" : "none", 0), 0u);
}

const ResNetConfig kSmall{"resnet18", 1, 8, 32, 2};
const ResNetConfig kResNet50{"resnet50", 1, 64, 1024, 2};  // full width, as the paper's

INSTANTIATE_TEST_SUITE_P(
    Checkpoints, ExportKinds,
    ::testing::Values(Kind{"small_float", kSmall, "", ""}, Kind{"small_msfp8", kSmall, "ms-fp8", ""},
                      Kind{"small_fixed16_6", kSmall, "fixed<16,6>", ""}, Kind{"small_int8", kSmall, "int8", ""},
                      Kind{"small_int8_activations", kSmall, "int8", "int8"}, Kind{"resnet50_float", kResNet50, "", ""},
                      Kind{"resnet50_msfp8", kResNet50, "ms-fp8", ""},
                      Kind{"resnet50_fixed16_6", kResNet50, "fixed<16,6>", ""},
                      Kind{"resnet50_int8", kResNet50, "int8", ""}),
    [](const ::testing::TestParamInfo<Kind>& info) { return std::string(info.param.name); });

TEST_F(Export, ThreeChannelImagesAndABasicBlockNetwork) {
  Tagger t = random_tagger({"resnet10", 3, 4, 16, 2}, 43);
  const std::string checkpoint = path("rgb.h5");
  save_tagger(checkpoint, t);
  expect_runtime_agreement(checkpoint, path("rgb.onnx"));
}

TEST_F(Export, TrainingCheckpointOfARealRun) {
  TrainConfig c;
  c.train_path = c.val_path = jets_;
  c.output_dir = path("run");
  c.arch = "resnet10";
  c.width = 4;
  c.hidden = 16;
  c.images = images_of(1);
  c.epochs = 1;
  c.batch_size = 5;
  const TrainResult run = train(c, nullptr);
  expect_runtime_agreement(run.last_checkpoint, path("run_last.onnx"));
  const onnx::ModelProto m = read_onnx(path("run_last.onnx"));
  // The run's configuration travels in the metadata.
  const TrainConfig stored = TrainConfig::from_json(onnx_metadata(m, "training_config"), "metadata");
  EXPECT_EQ(stored.arch, "resnet10");
  EXPECT_EQ(stored.images.size, kImageSize);
}

// Int8 activations on ResNet-50. Its outputs depend on the float summation order: a conv output
// within rounding noise of the midpoint between two quantization steps lands on either side, and the
// difference spreads through 54 quantized layers (ONNX Runtime and OpenCV disagree with each other by
// about 1e-3 in the probabilities of such a model), so no other runtime reproduces toptag's end to end
// to 1e-4. What must be exact is each quantizer: fed the same tensor, OpenCV's QuantizeLinear /
// DequantizeLinear pair gives what toptag's int8 quantizer gives, in every layer.
TEST_F(Export, Int8ActivationsOfResNet50AreToptagsQuantizerInEveryLayer) {
  Tagger t = random_tagger(kResNet50, 42);
  quantize(t, "int8", "int8");
  const std::string checkpoint = path("resnet50_int8_activations.h5"),
                    onnx_path = path("resnet50_int8_activations.onnx");
  save_tagger(checkpoint, t);
  Tagger loaded = load_tagger(checkpoint);
  const QuantizationConfig config = *loaded.quantization;
  const OnnxExport e = export_onnx(loaded, checkpoint);
  write_onnx(onnx_path, e.model);

  // Each layer's quantizer: the tensor it reads and its DequantizeLinear output "<layer>.input".
  struct Quantizer {
    std::string layer, input;
  };
  std::vector<Quantizer> quantizers;
  const std::string suffix = ".input.quantized";
  for (const auto& n : e.model.graph().node())
    if (n.op_type() == "QuantizeLinear")
      quantizers.push_back({n.output(0).substr(0, n.output(0).size() - suffix.size()), n.input(0)});
  ASSERT_EQ(quantizers.size(), loaded.model->convs().size() + loaded.model->linears().size());
  // OpenCV returns layer outputs, and OpenCV 4.6 names the layer of a node "onnx_node!<node name>"
  // (the graph's outputs keep their names). The graph input, which conv1's quantizer reads, is the
  // images themselves.
  auto layer_of = [](const std::string& value) {
    return value == kFeaturesTensor ? value : "onnx_node!" + value;  // the exporter names nodes by their output
  };
  std::vector<std::string> names;
  for (const Quantizer& q : quantizers)
    names.insert(names.end(), {q.input == kImagesTensor ? std::string(kProbabilitiesTensor) : layer_of(q.input),
                               layer_of(q.layer + ".input")});

  cv::dnn::Net net = opencv_net(onnx_path);
  const Tensor images = jet_images(loaded.images);
  std::vector<Tensor> got = opencv_forward(net, images, names);
  ASSERT_EQ(got.size(), names.size());
  for (size_t i = 0; i < quantizers.size(); ++i)
    if (quantizers[i].input == kImagesTensor) got[2 * i] = images;
  // OpenCV multiplies by 1 / scale where ONNX and toptag divide by scale: where x / scale is within a
  // rounding error of a midpoint the two may round apart, by one step. Such elements are rare.
  constexpr double kMidpointFraction = 1e-4;
  int64_t checked = 0, apart = 0;
  for (size_t i = 0; i < quantizers.size(); ++i) {
    const Tensor& x = got[2 * i];
    const Tensor& dequantized = got[2 * i + 1];
    const AffineRange& range = config.ranges.at(quantizers[i].layer);
    Tensor want = Tensor::empty(x.shape());
    quantize_tensor(*config.activations, false, x, want, nullptr, &range);
    ASSERT_EQ(dequantized.shape(), x.shape()) << quantizers[i].layer;
    for (int64_t k = 0; k < x.numel(); ++k) {
      const float a = dequantized.data()[k], b = want.data()[k];
      if (a == b) continue;
      ++apart;
      EXPECT_NEAR(std::abs(a - b), range.scale(), 1e-3 * range.scale())
          << quantizers[i].layer << " element " << k << ": x " << x.data()[k] << " -> " << a << ", toptag " << b;
    }
    checked += x.numel();
  }
  EXPECT_LE(static_cast<double>(apart), kMidpointFraction * static_cast<double>(checked));
  std::fprintf(stderr, "%zu quantizers, %ld values, %ld a step apart\n", quantizers.size(), static_cast<long>(checked),
               static_cast<long>(apart));

  // End to end, for the record: valid probabilities, and how far the summation order carried them.
  const Outputs want = toptag_outputs(checkpoint), end = opencv_outputs(net, images);
  double worst = 0;
  for (int64_t i = 0; i < kJets; ++i) {
    EXPECT_NEAR(end.probabilities.data()[2 * i] + end.probabilities.data()[2 * i + 1], 1.0, 1e-6);
    worst = std::max(worst, std::abs(static_cast<double>(end.scores[i]) - want.scores[i]));
  }
  std::fprintf(stderr, "resnet50 int8 activations end to end: max |p_opencv - p_toptag| = %.3g\n", worst);
}

// ---- what the model says about itself --------------------------------------------------------------

TEST_F(Export, MetadataDescribesTheCheckpoint) {
  Tagger t = random_tagger(kSmall, 44);
  quantize(t, "fixed<16,6>", "");
  const std::string checkpoint = path("meta.h5");
  save_tagger(checkpoint, t);
  Tagger loaded = load_tagger(checkpoint);
  const OnnxExport e = export_onnx(loaded, checkpoint);
  for (const char* key : kOnnxMetadataKeys) EXPECT_FALSE(onnx_metadata(e.model, key).empty()) << key;
  EXPECT_EQ(onnx_metadata(e.model, "arch"), "resnet18");
  EXPECT_EQ(onnx_metadata(e.model, "feature_dim"), "64");
  EXPECT_EQ(onnx_metadata(e.model, "quantization"), "weights fixed<16,6,TRN,WRAP>, activations float32, masked STE");
  ImageOptions images;
  fields_from_json(parse_json(onnx_metadata(e.model, "image_options"), "metadata"), images, "metadata");
  EXPECT_EQ(images.size, kImageSize);
  EXPECT_EQ(e.model.opset_import(0).version(), kOnnxOpset);
  // The interface of toptag serve.
  const std::vector<OnnxTensorInfo> in = onnx_inputs(e.model), out = onnx_outputs(e.model);
  ASSERT_EQ(in.size(), 1u);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(in[0].name, "images");
  EXPECT_EQ(in[0].dims, (std::vector<int64_t>{-1, 1, kImageSize, kImageSize}));
  EXPECT_EQ(out[0].name, "probabilities");
  EXPECT_EQ(out[0].dims, (std::vector<int64_t>{-1, 2}));
  EXPECT_EQ(out[1].name, "features");
  EXPECT_EQ(out[1].dims, (std::vector<int64_t>{-1, 64}));
}

TEST_F(Export, ActivationsInAFormatOnnxLacksAreStatedAsNotCarried) {
  Tagger t = random_tagger(kSmall, 45);
  quantize(t, "ms-fp8", "ms-fp8");
  const std::string checkpoint = path("bfp_activations.h5");
  save_tagger(checkpoint, t);
  Tagger loaded = load_tagger(checkpoint);
  const OnnxExport e = export_onnx(loaded, checkpoint);
  ASSERT_EQ(e.warnings.size(), 1u);
  EXPECT_NE(e.warnings[0].find("ms-fp8"), std::string::npos) << e.warnings[0];
  EXPECT_EQ(onnx_metadata(e.model, "activation_quantization").rfind("not carried", 0), 0u);
  EXPECT_EQ(onnx_metadata(e.model, "activation_format"), "ms-fp8");
  // What the graph computes instead: the same quantized weights on float32 activations.
  write_onnx(path("bfp_activations.onnx"), e.model);
  Tagger weights_only = load_tagger(checkpoint);
  auto config = std::make_shared<QuantizationConfig>(*weights_only.quantization);
  config->activations.reset();
  attach_quantization(*weights_only.model, config);
  weights_only.quantization = config;
  freeze_for_inference(weights_only);
  const Tensor images = jet_images(loaded.images);
  NoGradGuard no_grad;
  const Tensor want = weights_only.model->features(Var(images)).value();
  cv::dnn::Net net = opencv_net(path("bfp_activations.onnx"));
  testing::expect_close_to_max(opencv_outputs(net, images).features, want, "features on float activations",
                               kFeatureTolerance);
}

// ---- the checker is a real check ---------------------------------------------------------------------

TEST_F(Export, CheckerRejectsABrokenGraph) {
  Tagger t = random_tagger({"resnet10", 1, 4, 16, 2}, 46);
  const OnnxExport e = export_onnx(t, "random");
  onnx::ModelProto missing_weight = e.model;
  missing_weight.mutable_graph()->mutable_initializer()->RemoveLast();  // fc2.bias
  EXPECT_NE(testing::error_of([&] { check_onnx(missing_weight, "no fc2.bias"); }).find("no fc2.bias"),
            std::string::npos);
  onnx::ModelProto wrong_shape = e.model;
  wrong_shape.mutable_graph()
      ->mutable_output(1)
      ->mutable_type()
      ->mutable_tensor_type()
      ->mutable_shape()
      ->mutable_dim(1)
      ->set_dim_value(7);
  EXPECT_NE(testing::error_of([&] { check_onnx(wrong_shape, "features declared 7 wide"); }).find("shape inference"),
            std::string::npos);
}

// ---- the Triton repository -----------------------------------------------------------------------

// Text-format parse errors, kept instead of logged.
struct ErrorText : google::protobuf::io::ErrorCollector {
  std::string text;
  void AddError(int line, google::protobuf::io::ColumnNumber column, const std::string& message) override {
    text += fmt::format("{}:{}: {}\n", line, column, message);
  }
};

// An existing model directory is refused, naming what it holds (Triton would serve its version 2/,
// not the new 1/), and replaced whole with replace = true: no old version or file survives, other
// models of the repository are untouched, and no staging directory is left behind.
TEST_F(Export, TritonModelDirectoryIsReplacedWholeOrNotAtAll) {
  Tagger t = random_tagger({"resnet10", 1, 4, 16, 2}, 51);
  const OnnxExport e = export_onnx(t, "random");
  namespace fs = std::filesystem;
  fs::create_directories(path("repo3/toptag/2"));
  fs::create_directories(path("repo3/other/1"));
  std::ofstream(path("repo3/toptag/2/model.onnx")) << "old";
  std::ofstream(path("repo3/toptag/config.pbtxt")) << "old";
  std::ofstream(path("repo3/other/config.pbtxt")) << "another model";
  const std::string refused = testing::error_of([&] { write_triton_repository(path("repo3"), e.model, {}, false); });
  EXPECT_NE(refused.find(path("repo3/toptag") + " exists and holds 2/, config.pbtxt"), std::string::npos) << refused;
  EXPECT_NE(refused.find("--force"), std::string::npos) << refused;
  EXPECT_TRUE(fs::exists(path("repo3/toptag/2/model.onnx")));
  EXPECT_FALSE(fs::exists(path("repo3/toptag/1")));

  const TritonRepositoryWrite w = write_triton_repository(path("repo3"), e.model, {}, true);
  EXPECT_EQ(w.replaced, (std::vector<std::string>{"2/", "config.pbtxt"}));
  EXPECT_FALSE(fs::exists(path("repo3/toptag/2"))) << "an old version would be what Triton serves";
  EXPECT_EQ(read_onnx(path("repo3/toptag/1/model.onnx")).graph().node_size(), e.model.graph().node_size());
  std::ifstream config(path("repo3/toptag/config.pbtxt"));
  EXPECT_NE(std::string(std::istreambuf_iterator<char>(config), {}).find("max_batch_size"), std::string::npos);
  EXPECT_TRUE(fs::exists(path("repo3/other/config.pbtxt")));
  std::vector<std::string> left;
  for (const fs::directory_entry& entry : fs::directory_iterator(path("repo3")))
    left.push_back(entry.path().filename());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"other", "toptag"})) << "a staging directory was left behind";
  EXPECT_EQ(fs::status(path("repo3/toptag")).permissions() & fs::perms::others_read, fs::perms::others_read);
}

TEST_F(Export, TritonConfigParsesBackAndMatchesTheModel) {
  Tagger t = random_tagger(kSmall, 47);
  const std::string checkpoint = path("triton.h5");
  save_tagger(checkpoint, t);
  Tagger loaded = load_tagger(checkpoint);
  const OnnxExport e = export_onnx(loaded, checkpoint);
  TritonOptions o;
  o.model_name = "top_tagger";
  o.max_batch = 32;
  const std::string model_dir = write_triton_repository(path("repo"), e.model, o, false).model_dir;
  EXPECT_EQ(model_dir, path("repo/top_tagger"));

  std::ifstream in(model_dir + "/config.pbtxt");
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  inference::ModelConfig config;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &config)) << text;
  EXPECT_EQ(config.name(), "top_tagger");
  EXPECT_EQ(config.backend(), "onnxruntime");
  EXPECT_EQ(config.max_batch_size(), 32);
  EXPECT_TRUE(config.has_dynamic_batching());
  // Against the model file in the repository, with the batch dimension left to max_batch_size.
  const onnx::ModelProto model = read_onnx(model_dir + "/1/model.onnx");
  const std::vector<OnnxTensorInfo> inputs = onnx_inputs(model), outputs = onnx_outputs(model);
  ASSERT_EQ(config.input_size(), static_cast<int>(inputs.size()));
  ASSERT_EQ(config.output_size(), static_cast<int>(outputs.size()));
  auto expect_same = [](const auto& c, const OnnxTensorInfo& m) {
    EXPECT_EQ(c.name(), m.name);
    EXPECT_EQ(c.data_type(), inference::TYPE_FP32);
    EXPECT_EQ(m.elem_type, onnx::TensorProto::FLOAT);
    ASSERT_FALSE(m.dims.empty());
    EXPECT_EQ(m.dims[0], -1) << m.name << ": the batch dimension";
    EXPECT_EQ(std::vector<int64_t>(c.dims().begin(), c.dims().end()),
              std::vector<int64_t>(m.dims.begin() + 1, m.dims.end()))
        << m.name;
  };
  for (size_t i = 0; i < inputs.size(); ++i) expect_same(config.input(static_cast<int>(i)), inputs[i]);
  for (size_t i = 0; i < outputs.size(); ++i) expect_same(config.output(static_cast<int>(i)), outputs[i]);
  // The names toptag's clients ask for.
  EXPECT_EQ(config.input(0).name(), "images");
  EXPECT_EQ(config.output(0).name(), "probabilities");
  EXPECT_EQ(config.output(1).name(), "features");
  EXPECT_EQ(std::vector<int64_t>(config.output(1).dims().begin(), config.output(1).dims().end()),
            (std::vector<int64_t>{loaded.model->feature_dim()}));
  // The parser is strict: a field Triton does not have is an error, not silently dropped.
  inference::ModelConfig misspelled;
  ErrorText errors;
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  EXPECT_FALSE(parser.ParseFromString(text + "max_batch: 4\n", &misspelled));
  EXPECT_NE(errors.text.find("max_batch"), std::string::npos) << errors.text;
  // The repository's model runs.
  cv::dnn::Net net = opencv_net(model_dir + "/1/model.onnx");
  EXPECT_EQ(opencv_outputs(net, jet_images(loaded.images)).scores.size(), static_cast<size_t>(kJets));
}

// ---- errors name the reason ---------------------------------------------------------------------

TEST_F(Export, BadInputsAreErrorsNamingTheReason) {
  auto contains = [](const std::string& message, const std::string& part) {
    EXPECT_NE(message.find(part), std::string::npos) << "'" << message << "' does not mention '" << part << "'";
  };
  // A missing checkpoint, and a file that is not a checkpoint (jets).
  contains(testing::error_of([&] { load_tagger(path("missing.h5")); }), "missing.h5");
  contains(testing::error_of([&] { load_tagger(jets_); }), "jets.h5");

  Tagger t = random_tagger({"resnet10", 1, 4, 16, 2}, 48);
  const OnnxExport e = export_onnx(t, "random");
  // Unwritable outputs: a missing directory, and a directory where the file should be.
  contains(testing::error_of([&] { write_onnx(path("no/such/dir/m.onnx"), e.model); }), "no/such/dir/m.onnx");
  contains(testing::error_of([&] { write_onnx(dir_.string(), e.model); }), dir_.string());
  EXPECT_FALSE(std::filesystem::exists(path("no")));
  std::filesystem::create_directories(path("blocked"));
  std::ofstream(path("blocked/file")) << "x";
  contains(testing::error_of([&] { write_triton_repository(path("blocked/file"), e.model, {}, false); }),
           "blocked/file");
  contains(testing::error_of([&] {
             write_triton_repository(path("repo2"), e.model, {"../escape", 8, 0}, false);
           }),
           "../escape");
  EXPECT_FALSE(std::filesystem::exists(path("repo2")));
  // Reading back something that is not an ONNX model.
  contains(testing::error_of([&] { read_onnx(jets_); }), "not an ONNX model");

  // Models the interface cannot carry.
  Tagger three = random_tagger({"resnet10", 1, 4, 16, 3}, 49);
  contains(testing::error_of([&] { export_onnx(three, "three_classes.h5"); }), "3 classes");
  Tagger bad = random_tagger({"resnet10", 1, 4, 16, 2}, 50);
  bad.model->linears()[0].second->weight.value().data()[5] = std::numeric_limits<float>::quiet_NaN();
  contains(testing::error_of([&] { export_onnx(bad, "nan.h5"); }), "fc1.weight");
  Tagger uncalibrated = random_tagger({"resnet10", 1, 4, 16, 2}, 51);
  auto config = std::make_shared<QuantizationConfig>(make_quantization("int8", "int8", "masked"));
  config->ranges[std::string("conv1")] = AffineRange{0, 1};  // every other layer lacks its range
  uncalibrated.model->fold_batchnorm();
  attach_quantization(*uncalibrated.model, config);
  uncalibrated.quantization = config;
  contains(testing::error_of([&] { export_onnx(uncalibrated, "uncalibrated.h5"); }), "layer1.0.conv1");
}

}  // namespace
}  // namespace toptag
