#include "export/onnx_export.h"

#include <fmt/format.h>
#include <onnx/checker.h>
#include <onnx/defs/schema.h>
#include <onnx/shape_inference/implementation.h>

#include <climits>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "export/onnx_graph.h"
#include "io/config_json.h"
#include "io/files.h"
#include "nn/check.h"

namespace toptag {

namespace {

// The weight a layer computes with: after freeze_for_inference, a quantized layer's hook returns its
// weight quantized once (the exact decoded values); a float layer has no hook.
Tensor effective_weight(const std::shared_ptr<LayerHooks>& hooks, const Var& weight) {
  NoGradGuard no_grad;
  return hooks && hooks->weight ? hooks->weight(weight).value() : weight.value();
}

// Walks a frozen ResNet in forward order (ResNet::walk) and emits its nodes.
class Exporter {
 public:
  Exporter(onnx::GraphProto& graph, const QuantizationConfig* quantization, std::string source)
      : graph_(graph), quantization_(quantization), source_(std::move(source)) {}

  // images -> features (the Flatten after the global average pool) -> probabilities: the Softmax of
  // the head's logits over the classes, the graph form of class_probabilities (tagger/scores.h).
  void network(const ResNet& model, const std::string& images) {
    std::string x = images;
    std::string block_input, shortcut;  // the current block's input and its shortcut conv's output
    model.walk([&](const LayerStep& step) {
      switch (step.kind) {
        case LayerStep::Kind::conv:
          if (step.shortcut)
            shortcut = conv(step, block_input);
          else
            x = conv(step, x);
          break;
        case LayerStep::Kind::max_pool:
          x = graph_.node("MaxPool", {x}, step.name,
                          {{"kernel_shape", std::vector<int64_t>{step.pool.kernel, step.pool.kernel}},
                           {"strides", std::vector<int64_t>{step.pool.stride, step.pool.stride}},
                           {"pads", std::vector<int64_t>(4, step.pool.padding)}});
          break;
        case LayerStep::Kind::block_begin:
          block_input = x;
          shortcut.clear();
          break;
        case LayerStep::Kind::block_end:
          x = graph_.node("Add", {x, shortcut.empty() ? block_input : shortcut}, step.name + ".add");
          if (step.relu) x = graph_.node("Relu", {x}, step.name + ".relu");
          break;
        case LayerStep::Kind::global_avg_pool:
          x = graph_.node("GlobalAveragePool", {x}, step.name);
          x = graph_.node("Flatten", {x}, kFeaturesTensor, {{"axis", int64_t{1}}});
          break;
        case LayerStep::Kind::linear:
          x = gemm(*step.linear, step.name, x);
          if (step.relu) x = graph_.node("Relu", {x}, step.name + ".relu");
          break;
      }
    });
    graph_.node("Softmax", {x}, kProbabilitiesTensor, {{"axis", int64_t{1}}});
  }

  OnnxGraph& graph() { return graph_; }

 private:
  // A conv step with its batch norm folded in: Conv (with bias), then Relu if the step has one.
  std::string conv(const LayerStep& step, const std::string& x) {
    const Conv2d& c = *step.conv;
    const std::string& name = step.name;
    const Tensor w = effective_weight(c.hooks, c.weight);
    check_finite(name + ".weight", w);
    if (!c.bias.value().defined()) fail("{}: layer '{}' has no bias: its batch norm was not folded", source_, name);
    check_finite(name + ".bias", c.bias.value());
    const int64_t kernel_h = w.dim(2), kernel_w = w.dim(3);
    std::string y = graph_.node("Conv",
                                {layer_input(name, x), graph_.initializer(name + ".weight", w),
                                 graph_.initializer(name + ".bias", c.bias.value())},
                                name,
                                {{"kernel_shape", std::vector<int64_t>{kernel_h, kernel_w}},
                                 {"strides", std::vector<int64_t>{c.params.stride, c.params.stride}},
                                 {"pads", std::vector<int64_t>(4, c.params.padding)}});
    return step.relu ? graph_.node("Relu", {y}, name + ".relu") : y;
  }

  // y = x W^T + b: Gemm with transB, W kept in PyTorch's (out, in) layout.
  std::string gemm(const Linear& l, const std::string& name, const std::string& x) {
    const Tensor w = effective_weight(l.hooks, l.weight);
    check_finite(name + ".weight", w);
    check_finite(name + ".bias", l.bias.value());
    return graph_.node("Gemm",
                       {layer_input(name, x), graph_.initializer(name + ".weight", w),
                        graph_.initializer(name + ".bias", l.bias.value())},
                       name, {{"transB", int64_t{1}}});
  }

  // A layer's input as the engine feeds it: int8 activations go through the layer's uint8 quantizer
  // (quantize/format.h: q = clamp(round_half_even(x / scale) + zero_point, 0, 255), x' = (q -
  // zero_point) scale), which is exactly QuantizeLinear followed by DequantizeLinear.
  std::string layer_input(const std::string& layer, const std::string& x) {
    if (!quantization_ || !quantization_->activations || quantization_->activations->kind != FormatKind::int8) return x;
    auto it = quantization_->ranges.find(layer);
    if (it == quantization_->ranges.end())
      fail("{}: layer '{}' has int8 activations but no calibrated input range", source_, layer);
    const std::string scale = graph_.scalar_float(layer + ".input.scale", it->second.scale());
    const std::string zero =
        graph_.scalar_uint8(layer + ".input.zero_point", static_cast<uint8_t>(it->second.zero_point()));
    const std::string q = graph_.node("QuantizeLinear", {x, scale, zero}, layer + ".input.quantized");
    return graph_.node("DequantizeLinear", {q, scale, zero}, layer + ".input");
  }

  void check_finite(const std::string& tensor, const Tensor& t) const {
    if (!all_finite(t.span()))
      fail("{}: tensor '{}' holds NaN or inf: the model cannot score any jet (export a checkpoint that can)", source_,
           tensor);
  }

  OnnxGraph graph_;
  const QuantizationConfig* quantization_;
  std::string source_;
};

// How the graph treats the checkpoint's activation quantization; sets `warning` when it is not carried.
std::string activation_handling(const Tagger& tagger, std::string& warning) {
  if (!tagger.quantization || !tagger.quantization->activations) return "none (float32 activations)";
  const Format& f = *tagger.quantization->activations;
  if (f.kind == FormatKind::int8)
    return "exact: QuantizeLinear/DequantizeLinear (uint8, per tensor, the calibrated ranges) before every Conv and "
           "Gemm";
  warning = fmt::format(
      "the checkpoint quantizes every conv and linear input to {}, which no ONNX operator expresses: the exported "
      "graph computes with float32 activations (quantized weights only), so its scores differ from toptag predict's",
      f.str());
  return "not carried: " + warning;
}

void add_metadata(onnx::ModelProto& m, const std::string& key, const std::string& value) {
  onnx::StringStringEntryProto* e = m.add_metadata_props();
  e->set_key(key);
  e->set_value(value);
}

void describe(onnx::ModelProto& m, const Tagger& t, const std::string& source, const std::string& activations) {
  const ResNetConfig& c = t.model->config();
  add_metadata(m, "toptag_version", TOPTAG_VERSION);
  add_metadata(m, "source", std::filesystem::path(source).filename().string());
  add_metadata(m, "arch", c.arch);
  add_metadata(m, "in_channels", std::to_string(c.in_channels));
  add_metadata(m, "stem_width", std::to_string(c.width));
  add_metadata(m, "hidden", std::to_string(c.hidden));
  add_metadata(m, "classes", std::to_string(c.classes));
  add_metadata(m, "feature_dim", std::to_string(t.model->feature_dim()));
  add_metadata(m, "image_options", fields_to_json(t.images).dump());
  add_metadata(
      m, "preprocessing",
      fmt::format("jet images {}, made from constituents outside the graph (toptag images)", t.images.describe()));
  add_metadata(m, "batchnorm", "folded into the convolutions' weights and biases");
  add_metadata(m, "quantization", t.describe());
  add_metadata(m, "weight_format", t.quantization ? t.quantization->weights.str() : "float32");
  add_metadata(m, "activation_format",
               t.quantization && t.quantization->activations ? t.quantization->activations->str() : "float32");
  add_metadata(m, "activation_quantization", activations);
  if (!t.training_config.empty()) add_metadata(m, "training_config", t.training_config);
}

}  // namespace

OnnxExport export_onnx(Tagger& tagger, const std::string& source) {
  ResNet& model = *tagger.model;
  const ResNetConfig& c = model.config();
  if (c.classes != 2)
    fail("{}: the model has {} classes; the served interface returns probabilities [batch, 2] (QCD, top)", source,
         c.classes);
  prepare_for_inference(tagger);  // folded, quantized weights once; nothing packed: the exporter runs nothing
  TT_ASSERT(model.folded());

  OnnxExport out;
  onnx::ModelProto& m = out.model;
  m.set_ir_version(kOnnxIrVersion);
  m.set_producer_name("toptag");
  m.set_producer_version(TOPTAG_VERSION);
  m.set_model_version(1);
  m.set_doc_string(fmt::format("toptag {} top-quark jet tagger ({}) from {}", c.arch, tagger.describe(),
                               std::filesystem::path(source).filename().string()));
  onnx::OperatorSetIdProto* opset = m.add_opset_import();
  opset->set_domain("");
  opset->set_version(kOnnxOpset);
  onnx::GraphProto& graph = *m.mutable_graph();
  graph.set_name("toptag_" + c.arch);

  Exporter e(graph, tagger.quantization.get(), source);
  e.graph().input(kImagesTensor, {-1, c.in_channels, tagger.images.size, tagger.images.size});
  e.network(model, kImagesTensor);
  e.graph().output(kProbabilitiesTensor, {-1, c.classes});
  e.graph().output(kFeaturesTensor, {-1, model.feature_dim()});

  std::string warning;
  describe(m, tagger, source, activation_handling(tagger, warning));
  if (!warning.empty()) out.warnings.push_back(warning);
  check_onnx(m, "the model exported from " + source);
  return out;
}

void check_onnx(const onnx::ModelProto& model, const std::string& what) {
  try {
    onnx::checker::check_model(model);
  } catch (const std::exception& e) {
    fail("{}: the ONNX checker rejects it: {}", what, e.what());
  }
  // Strict shape inference: every node's inputs fit its operator, and the declared output shapes
  // agree with the inferred ones. It runs on a copy because it records what it infers in the graph.
  onnx::ModelProto copy = model;
  try {
    onnx::shape_inference::InferShapes(copy, onnx::OpSchemaRegistry::Instance(),
                                       onnx::ShapeInferenceOptions(/*check_type=*/true, /*error_mode=*/1));
  } catch (const std::exception& e) {
    fail("{}: ONNX shape inference fails: {}", what, e.what());
  }
}

void write_onnx(const std::string& path, const onnx::ModelProto& model) {
  if (model.ByteSizeLong() > static_cast<size_t>(INT_MAX))
    fail("{}: the model is {} bytes, over protobuf's 2 GiB limit for one message", path, model.ByteSizeLong());
  std::string bytes;
  if (!model.SerializeToString(&bytes)) fail("{}: cannot serialize the ONNX model", path);
  write_text_atomically(path, bytes);  // opened in binary mode: bytes are written as they are
}

onnx::ModelProto read_onnx(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path);
  const std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  onnx::ModelProto model;
  if (!model.ParseFromString(bytes) || model.ir_version() <= 0 || model.graph().node_size() == 0)
    fail("{}: not an ONNX model (no onnx.ModelProto with a graph)", path);
  return model;
}

std::string onnx_metadata(const onnx::ModelProto& model, const std::string& key) {
  for (const auto& e : model.metadata_props())
    if (e.key() == key) return e.value();
  return "";
}

}  // namespace toptag
