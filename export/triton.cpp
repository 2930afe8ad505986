#include "export/triton.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <google/protobuf/text_format.h>
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

// Where a new model directory is built: beside the repository, where a polling Triton never sees it,
// or, when the repository is a file system of its own (a mounted volume) or its parent is not
// writable, inside it under a hidden name (a rename cannot cross file systems).
std::string staging_prefix(const fs::path& repository, const std::string& model_name) {
  fs::path repo = fs::absolute(repository).lexically_normal();
  if (repo.filename().empty()) repo = repo.parent_path();  // "models/"
  const fs::path parent = repo.parent_path();
  struct stat r {
  }, p{};
  const bool beside = ::stat(repo.c_str(), &r) == 0 && ::stat(parent.c_str(), &p) == 0 && r.st_dev == p.st_dev &&
                      ::access(parent.c_str(), W_OK) == 0;
  if (beside) return (parent / ("." + repo.filename().string() + "-" + model_name)).string();
  return (repo / ("." + model_name)).string();
}

// Puts the finished directory `built` at `target` with one rename. An existing target is swapped
// out atomically (RENAME_EXCHANGE), or, on file systems without it (NFS), moved to `old` first.
void move_into_place(const fs::path& built, const fs::path& target, bool exists, const fs::path& old) {
  if (!exists) {
    if (::rename(built.c_str(), target.c_str()) != 0)
      fail("{}: cannot move the finished model directory into place: {}", target.string(), std::strerror(errno));
    return;
  }
  if (::renameat2(AT_FDCWD, built.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) == 0) return;
  if (errno != EINVAL && errno != ENOSYS)
    fail("{}: cannot swap the finished model directory into place: {}", target.string(), std::strerror(errno));
  if (::rename(target.c_str(), old.c_str()) != 0)
    fail("{}: cannot move the old model directory aside: {}", target.string(), std::strerror(errno));
  if (::rename(built.c_str(), target.c_str()) != 0) {
    const int e = errno;
    ::rename(old.c_str(), target.c_str());  // put the old one back
    fail("{}: cannot move the finished model directory into place: {}", target.string(), std::strerror(e));
  }
}

}  // namespace

TritonRepositoryWrite write_triton_repository(const std::string& dir, const onnx::ModelProto& model,
                                              const TritonOptions& o, bool replace) {
  const std::string config = triton_config(model, o);  // every check before anything is written
  const fs::path model_dir = fs::path(dir) / o.model_name;
  if (fs::exists(dir) && !fs::is_directory(dir))
    fail("{}: not a directory, so it cannot hold the model directory {}", dir, model_dir.string());
  TritonRepositoryWrite result;
  result.model_dir = model_dir.string();
  const bool exists = fs::exists(model_dir);
  if (exists) {
    if (!fs::is_directory(model_dir)) fail("{}: exists and is not a directory", model_dir.string());
    result.replaced = entries_of(model_dir);
    if (!replace)
      fail(
          "{} exists and holds {}: Triton serves a model's highest version, so an old version directory would "
          "be served instead of this export; give --force to replace the whole directory, or another "
          "--triton-repo or --model-name",
          model_dir.string(),
          result.replaced.empty() ? "nothing" : fmt::format("{}", fmt::join(result.replaced, ", ")));
  }
  std::error_code e;
  fs::create_directories(dir, e);
  if (e) fail("{}: cannot create the directory: {}", dir, e.message());
  TempDir staging(staging_prefix(dir, o.model_name));
  const fs::path built = fs::path(staging.path()) / o.model_name;
  fs::create_directories(built / kTritonVersion, e);
  if (e) fail("{}: cannot create the directory: {}", (built / kTritonVersion).string(), e.message());
  write_onnx((built / kTritonVersion / kTritonModelFile).string(), model);
  write_text_atomically((built / "config.pbtxt").string(), config);
  refuse_replacing_an_input(model_dir.string());
  move_into_place(built, model_dir, exists, fs::path(staging.path()) / "old");
  try {
    staging.remove();  // the exchanged old directory with it
  } catch (const Error& error) {
    result.leftover = error.what();  // the export is in place; only the old copy stayed behind
  }
  return result;
}

}  // namespace toptag
