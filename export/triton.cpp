#include "export/triton.h"

#include <fmt/format.h>
#include <google/protobuf/text_format.h>

#include <filesystem>
#include <limits>

#include "export/onnx_export.h"
#include "export/onnx_graph.h"
#include "io/files.h"
#include "model_config.pb.h"
#include "nn/check.h"

namespace toptag {

namespace {

constexpr const char* kTritonBackend = "onnxruntime";
constexpr const char* kTritonModelFile = "model.onnx";  // the onnxruntime backend's default file name

inference::DataType triton_type(const OnnxTensorInfo& t) {
  if (t.elem_type == onnx::TensorProto::FLOAT) return inference::TYPE_FP32;
  fail("tensor '{}' has ONNX element type {}; toptag's models exchange float32 only", t.name, t.elem_type);
}

// The dimensions after the batch; the first must be the symbolic batch dimension.
std::vector<int64_t> per_item_dims(const OnnxTensorInfo& t) {
  if (t.dims.empty() || t.dims[0] != -1)
    fail("tensor '{}' has no leading dynamic batch dimension, which Triton's max_batch_size needs", t.name);
  for (size_t i = 1; i < t.dims.size(); ++i)
    if (t.dims[i] < 1) fail("tensor '{}' has a variable dimension {} besides the batch", t.name, i);
  return {t.dims.begin() + 1, t.dims.end()};
}

}  // namespace

void check_triton_model_name(const std::string& name) {
  const bool plain =
      !name.empty() && name != "." && name != ".." &&
      name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.") == std::string::npos;
  if (!plain)
    fail("model name '{}' must be letters, digits, '_', '-' or '.' (it names a directory of the repository)", name);
}

std::string triton_config(const onnx::ModelProto& model, const TritonOptions& o) {
  check_triton_model_name(o.model_name);
  if (o.max_batch < 1 || o.max_batch > std::numeric_limits<int32_t>::max())
    fail("max batch {} is not a positive 32-bit count", o.max_batch);
  if (o.max_queue_delay_us < 0) fail("max queue delay {} us is negative", o.max_queue_delay_us);
  inference::ModelConfig c;
  c.set_name(o.model_name);
  c.set_backend(kTritonBackend);
  c.set_max_batch_size(static_cast<int32_t>(o.max_batch));
  for (const OnnxTensorInfo& t : onnx_inputs(model)) {
    inference::ModelInput* in = c.add_input();
    in->set_name(t.name);
    in->set_data_type(triton_type(t));
    for (int64_t d : per_item_dims(t)) in->add_dims(d);
  }
  for (const OnnxTensorInfo& t : onnx_outputs(model)) {
    inference::ModelOutput* out = c.add_output();
    out->set_name(t.name);
    out->set_data_type(triton_type(t));
    for (int64_t d : per_item_dims(t)) out->add_dims(d);
  }
  c.mutable_dynamic_batching()->set_max_queue_delay_microseconds(static_cast<uint64_t>(o.max_queue_delay_us));
  std::string text;
  if (!google::protobuf::TextFormat::PrintToString(c, &text)) fail("cannot print the Triton model configuration");
  return fmt::format(
             "# Triton model configuration written by toptag export ({} {}). Inputs are jet images, made from\n"
             "# constituents outside the model by toptag images; see the model's metadata_props.\n",
             onnx_metadata(model, "arch"), onnx_metadata(model, "quantization")) +
         text;
}

std::string write_triton_repository(const std::string& dir, const onnx::ModelProto& model, const TritonOptions& o) {
  const std::string config = triton_config(model, o);  // every check before anything is written
  const std::filesystem::path model_dir = std::filesystem::path(dir) / o.model_name;
  const std::filesystem::path version_dir = model_dir / kTritonVersion;
  std::error_code e;
  std::filesystem::create_directories(version_dir, e);
  if (e) fail("{}: cannot create the directory: {}", version_dir.string(), e.message());
  write_onnx((version_dir / kTritonModelFile).string(), model);
  write_text_atomically((model_dir / "config.pbtxt").string(), config);
  return model_dir.string();
}

}  // namespace toptag
