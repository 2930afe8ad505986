#include "export/triton.h"

#include <fmt/format.h>
#include <google/protobuf/text_format.h>

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>

#include "export/onnx_export.h"
#include "export/onnx_graph.h"
#include "io/files.h"
#include "model_config.pb.h"
#include "nn/check.h"

namespace toptag {

namespace fs = std::filesystem;

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

namespace {

// The entries of a directory, sorted, directories marked with a trailing '/'.
std::vector<std::string> entries_of(const fs::path& dir) {
  std::vector<std::string> names;
  std::error_code e;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, e))
    names.push_back(entry.path().filename().string() + (entry.is_directory() ? "/" : ""));
  std::sort(names.begin(), names.end());
  return names;
}

// A new directory with a unique name beside `target`, removed with its contents unless released.
class StagingDir {
 public:
  explicit StagingDir(const fs::path& target) {
    std::string name = target.string() + ".tmp-XXXXXX";
    if (::mkdtemp(name.data()) == nullptr)
      fail("{}: cannot create a directory beside it: {}", target.string(), std::strerror(errno));
    path_ = name;
  }
  ~StagingDir() {
    std::error_code e;
    if (!path_.empty()) fs::remove_all(path_, e);
  }
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;
  const fs::path& path() const { return path_; }
  void release() { path_.clear(); }  // it became the target: keep it

 private:
  fs::path path_;
};

}  // namespace

TritonRepositoryWrite write_triton_repository(const std::string& dir, const onnx::ModelProto& model,
                                              const TritonOptions& o, bool replace) {
  const std::string config = triton_config(model, o);  // every check before anything is written
  const fs::path model_dir = fs::path(dir) / o.model_name;
  if (fs::exists(dir) && !fs::is_directory(dir))
    fail("{}: not a directory, so it cannot hold the model directory {}", dir, model_dir.string());
  TritonRepositoryWrite result{model_dir.string(), {}};
  const bool exists = fs::exists(model_dir);
  if (exists) {
    if (!fs::is_directory(model_dir)) fail("{}: exists and is not a directory", model_dir.string());
    result.replaced = entries_of(model_dir);
    if (!replace)
      fail("{} exists and holds {}: Triton serves a model's highest version, so an old version directory would "
           "be served instead of this export; give --force to replace the whole directory, or another "
           "--triton-repo or --model-name",
           model_dir.string(), result.replaced.empty() ? "nothing" : fmt::format("{}", fmt::join(result.replaced, ", ")));
  }
  std::error_code e;
  fs::create_directories(dir, e);
  if (e) fail("{}: cannot create the directory: {}", dir, e.message());
  StagingDir staging(model_dir);
  fs::create_directory(staging.path() / kTritonVersion, e);
  if (e) fail("{}: cannot create the directory: {}", (staging.path() / kTritonVersion).string(), e.message());
  write_onnx((staging.path() / kTritonVersion / kTritonModelFile).string(), model);
  write_text_atomically((staging.path() / "config.pbtxt").string(), config);
  ::chmod(staging.path().c_str(), 0755);  // mkdtemp makes it 0700; a model directory is read by a server
  // One rename puts the finished directory in place; an old one is swapped out atomically (the staging
  // name then holds it, and is removed with it), so Triton's polling never sees a half-written model.
  const int moved = exists ? ::renameat2(AT_FDCWD, staging.path().c_str(), AT_FDCWD, model_dir.c_str(), RENAME_EXCHANGE)
                           : ::rename(staging.path().c_str(), model_dir.c_str());
  if (moved != 0) fail("{}: cannot move the finished model directory into place: {}", model_dir.string(), std::strerror(errno));
  if (!exists) staging.release();
  return result;
}

}  // namespace toptag
