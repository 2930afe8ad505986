#include "export/onnx_graph.h"

#include <bit>
#include <set>

#include "nn/check.h"

namespace toptag {

// Initializers hold raw_data, which ONNX defines as little-endian.
static_assert(std::endian::native == std::endian::little, "raw ONNX tensor data is little-endian");

namespace {

constexpr const char* kBatchDim = "batch";

void set_float_type(onnx::ValueInfoProto& v, const std::string& name, const std::vector<int64_t>& dims) {
  v.set_name(name);
  onnx::TypeProto_Tensor* t = v.mutable_type()->mutable_tensor_type();
  t->set_elem_type(onnx::TensorProto::FLOAT);
  onnx::TensorShapeProto* shape = t->mutable_shape();
  for (int64_t d : dims) {
    onnx::TensorShapeProto_Dimension* dim = shape->add_dim();
    if (d < 0) {
      dim->set_dim_param(kBatchDim);
    } else {
      dim->set_dim_value(d);
    }
  }
}

std::vector<OnnxTensorInfo> infos(const google::protobuf::RepeatedPtrField<onnx::ValueInfoProto>& values) {
  std::vector<OnnxTensorInfo> out;
  for (const onnx::ValueInfoProto& v : values) {
    OnnxTensorInfo info{v.name(), v.type().tensor_type().elem_type(), {}};
    for (const auto& d : v.type().tensor_type().shape().dim())
      info.dims.push_back(d.has_dim_value() ? d.dim_value() : -1);
    out.push_back(std::move(info));
  }
  return out;
}

}  // namespace

std::string OnnxGraph::initializer(const std::string& name, const Tensor& value) {
  onnx::TensorProto* t = graph_.add_initializer();
  t->set_name(name);
  t->set_data_type(onnx::TensorProto::FLOAT);
  for (int64_t d : value.shape().dims()) t->add_dims(d);
  t->set_raw_data(value.data(), static_cast<size_t>(value.numel()) * sizeof(float));
  return name;
}

std::string OnnxGraph::scalar_float(const std::string& name, float value) {
  onnx::TensorProto* t = graph_.add_initializer();
  t->set_name(name);
  t->set_data_type(onnx::TensorProto::FLOAT);
  t->add_float_data(value);
  return name;
}

std::string OnnxGraph::scalar_uint8(const std::string& name, uint8_t value) {
  onnx::TensorProto* t = graph_.add_initializer();
  t->set_name(name);
  t->set_data_type(onnx::TensorProto::UINT8);
  t->add_int32_data(value);  // ONNX stores uint8 elements in int32_data
  return name;
}

std::string OnnxGraph::node(const std::string& op, const std::vector<std::string>& inputs, const std::string& output,
                            const std::vector<OnnxAttribute>& attributes) {
  onnx::NodeProto* n = graph_.add_node();
  n->set_op_type(op);
  n->set_name(output);
  for (const std::string& in : inputs) n->add_input(in);
  n->add_output(output);
  for (const OnnxAttribute& a : attributes) {
    onnx::AttributeProto* attr = n->add_attribute();
    attr->set_name(a.name);
    if (const int64_t* i = std::get_if<int64_t>(&a.value)) {
      attr->set_type(onnx::AttributeProto::INT);
      attr->set_i(*i);
    } else {
      attr->set_type(onnx::AttributeProto::INTS);
      for (int64_t v : std::get<std::vector<int64_t>>(a.value)) attr->add_ints(v);
    }
  }
  return output;
}

void OnnxGraph::input(const std::string& name, const std::vector<int64_t>& dims) {
  set_float_type(*graph_.add_input(), name, dims);
}

void OnnxGraph::output(const std::string& name, const std::vector<int64_t>& dims) {
  set_float_type(*graph_.add_output(), name, dims);
}

std::vector<std::string> onnx_operators(const onnx::ModelProto& model) {
  std::set<std::string> ops;
  for (const onnx::NodeProto& n : model.graph().node()) ops.insert(n.op_type());
  return {ops.begin(), ops.end()};
}

std::vector<OnnxTensorInfo> onnx_inputs(const onnx::ModelProto& model) {
  return infos(model.graph().input());
}

std::vector<OnnxTensorInfo> onnx_outputs(const onnx::ModelProto& model) {
  return infos(model.graph().output());
}

}  // namespace toptag
