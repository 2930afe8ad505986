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

// The graph's tensor as Triton sees it; float32 only.
TritonTensor triton_tensor(const OnnxTensorInfo& t) {
  if (t.elem_type != onnx::TensorProto::FLOAT)
    fail("tensor '{}' has ONNX element type {}; toptag's models exchange float32 only", t.name, t.elem_type);
  return {t.name, t.dims};
}

}  // namespace

TritonModel triton_model(const onnx::ModelProto& model, const TritonOptions& o) {
  TritonModel m;
  m.name = o.model_name;
  m.backend = kTritonBackend;
  m.max_batch = o.max_batch;
  m.max_queue_delay_us = o.max_queue_delay_us;
  for (const OnnxTensorInfo& t : onnx_inputs(model)) m.inputs.push_back(triton_tensor(t));
  for (const OnnxTensorInfo& t : onnx_outputs(model)) m.outputs.push_back(triton_tensor(t));
  return m;
}

std::string triton_config(const onnx::ModelProto& model, const TritonOptions& o) {
  const inference::ModelConfig c = triton_model_config(triton_model(model, o));
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
  fs::create_directories(built / kModelVersion, e);
  if (e) fail("{}: cannot create the directory: {}", (built / kModelVersion).string(), e.message());
  write_onnx((built / kModelVersion / kTritonModelFile).string(), model);
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
