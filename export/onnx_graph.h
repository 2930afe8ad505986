// A thin builder over ONNX's generated GraphProto (libonnx, onnx/onnx_pb.h): float initializers from
// toptag tensors, nodes with their attributes, and typed graph inputs and outputs. Every value is
// named by the string the builder returns, so a model is written as a chain of calls:
//   x = g.node("Conv", {x, w, b}, "layer1.0.conv1", {{"strides", {1, 1}}});
#pragma once

#include <onnx/onnx_pb.h>

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "nn/tensor.h"

namespace toptag {

struct OnnxAttribute {
  std::string name;
  std::variant<int64_t, std::vector<int64_t>> value;
};

class OnnxGraph {
 public:
  explicit OnnxGraph(onnx::GraphProto& graph) : graph_(graph) {}

  // A float32 initializer holding `value` in its shape; returns `name`.
  std::string initializer(const std::string& name, const Tensor& value);
  // Scalar initializers (shape []), as QuantizeLinear's scale and zero point take them.
  std::string scalar_float(const std::string& name, float value);
  std::string scalar_uint8(const std::string& name, uint8_t value);

  // Appends a node named `output` computing `op` on `inputs`; returns `output`, its only result.
  std::string node(const std::string& op, const std::vector<std::string>& inputs, const std::string& output,
                   const std::vector<OnnxAttribute>& attributes = {});

  // A float32 graph input or output; a dimension of -1 is the batch, named "batch".
  void input(const std::string& name, const std::vector<int64_t>& dims);
  void output(const std::string& name, const std::vector<int64_t>& dims);

 private:
  onnx::GraphProto& graph_;
};

// The distinct operator types of a model's graph, sorted.
std::vector<std::string> onnx_operators(const onnx::ModelProto& model);

// A graph input or output as a server describes it: name, ONNX element type, dimensions (-1 where
// symbolic: the batch).
struct OnnxTensorInfo {
  std::string name;
  int32_t elem_type = 0;  // onnx::TensorProto::FLOAT, ...
  std::vector<int64_t> dims;
};
std::vector<OnnxTensorInfo> onnx_inputs(const onnx::ModelProto& model);
std::vector<OnnxTensorInfo> onnx_outputs(const onnx::ModelProto& model);

}  // namespace toptag
