// toptag export: a tagger as an ONNX model with the interface of toptag serve (serve/service.h), so
// that Triton's ONNX Runtime backend, OpenVINO, TensorRT or OpenCV run it unchanged:
//   input   images         float32 [batch, C, H, W]   jet images, made by toptag images / the same code
//   outputs probabilities  float32 [batch, 2]         softmax of the logits (QCD, top)
//           features       float32 [batch, F]         the featurizer's output (after the average pool)
//
// The graph is what toptag computes in eval mode after freeze_for_inference (tagger/tagger.h):
// batch norms folded into the convolutions (w' = w gamma / sqrt(var + eps), b' = beta + (b - mean)
// gamma / sqrt(var + eps)), and each layer's weight as the engine uses it: a quantized checkpoint's
// weights decoded to the exactly quantized float values. Int8 activations are carried exactly as a
// QuantizeLinear/DequantizeLinear pair (uint8, per tensor) in front of every conv and Gemm; ONNX has
// no operator for fixed-point or block-floating-point activations, so those are not carried: the
// export warns and records it in the metadata ("activation_quantization").
//
// Operators (opset 13): Conv, Relu, MaxPool, Add, GlobalAveragePool, Flatten, Gemm, Softmax, and
// QuantizeLinear and DequantizeLinear for int8 activations. Checkpoint facts go into the model's
// metadata_props (keys in kOnnxMetadataKeys).
#pragma once

#include <onnx/onnx_pb.h>

#include <string>
#include <vector>

#include "tagger/tagger.h"
#include "triton/model_config.h"  // the tensor names, shared with toptag serve

namespace toptag {

constexpr int64_t kOnnxOpset = 13;
constexpr int64_t kOnnxIrVersion = 7;  // the IR version that came with opset 13 (ONNX 1.8)

// The metadata_props every export writes (training_config only when the checkpoint has one).
constexpr const char* kOnnxMetadataKeys[] = {
    "toptag_version", "source",       "arch",          "in_channels",       "stem_width",
    "hidden",         "classes",      "feature_dim",   "image_options",     "preprocessing",
    "batchnorm",      "quantization", "weight_format", "activation_format", "activation_quantization",
    "training_config"};

struct OnnxExport {
  onnx::ModelProto model;
  // What the graph does not carry of the checkpoint (activation quantization in a format ONNX lacks).
  std::vector<std::string> warnings;
};

// Builds the ONNX model of `tagger`, freezing it for inference first (batch norms folded, quantized
// weights computed once). `source` names the checkpoint in errors and the metadata. The model has
// passed ONNX's checker and strict shape inference. Throws toptag::Error for a model the interface
// cannot carry (not 2 classes, a NaN or inf weight, an int8 layer without a calibrated range).
OnnxExport export_onnx(Tagger& tagger, const std::string& source);

// ONNX's checker and strict shape inference; an error naming `what` and the checker's reason.
void check_onnx(const onnx::ModelProto& model, const std::string& what);

// Writes the model atomically; an error names `path`.
void write_onnx(const std::string& path, const onnx::ModelProto& model);
// Reads a model file; an error names `path` if it is missing or not an ONNX model.
onnx::ModelProto read_onnx(const std::string& path);

// The value of a metadata_props key ("" if absent).
std::string onnx_metadata(const onnx::ModelProto& model, const std::string& key);

}  // namespace toptag
