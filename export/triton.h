// A Triton model repository around an exported ONNX model, so that
//   tritonserver --model-repository DIR
// serves it with the ONNX Runtime backend and toptag predict --server / toptag perf talk to it as to
// toptag serve:
//   DIR/NAME/config.pbtxt   backend onnxruntime, max_batch_size, dynamic_batching, inputs, outputs
//   DIR/NAME/1/model.onnx   version 1, as toptag serve reports its model
// The config is written with the generated classes of Triton's model_config.proto (a subset, in
// export/proto) and protobuf's text format, and derived from the model's own graph inputs and outputs.
#pragma once

#include <onnx/onnx_pb.h>

#include <cstdint>
#include <string>
#include <vector>

namespace toptag {

struct TritonOptions {
  std::string model_name = "toptag";  // what clients ask for: toptag predict --server --model NAME
  int64_t max_batch = 64;             // max_batch_size: the most images per execution, as toptag serve --max-batch
  int64_t max_queue_delay_us = 2000;  // dynamic batching's wait for a batch to fill, as toptag serve's default
};

constexpr const char* kTritonVersion = "1";  // the one version, as toptag serve reports it

// Throws unless `name` can be a Triton model name and a directory: non-empty, letters, digits, '_',
// '-' and '.', and not "." or "..".
void check_triton_model_name(const std::string& name);

// config.pbtxt for `model`: every graph input and output with its element type and its dimensions
// less the leading batch dimension, which must be the symbolic batch (Triton adds it back).
std::string triton_config(const onnx::ModelProto& model, const TritonOptions& options);

// Writes the model directory DIR/NAME (config.pbtxt and 1/model.onnx) whole: built under a unique
// name beside the repository (inside it, hidden, when the repository is a mounted file system of its
// own), then put in place by one rename, so a failure leaves no new model.onnx beside an old
// config.pbtxt, and a polling Triton never sees a half-written model. An existing DIR/NAME is refused, listing what it
// holds (a version 2/ beside the new 1/ would be what Triton serves), unless `replace`: then the old directory is
// swapped out whole and removed. Returns DIR/NAME and, when one was replaced, what it held. An error names the path.
struct TritonRepositoryWrite {
  std::string model_dir;
  std::vector<std::string> replaced;  // the old directory's entries ("1/", "config.pbtxt"), if any
  std::string leftover;               // why the old directory could not be removed, if it could not
};
TritonRepositoryWrite write_triton_repository(const std::string& dir, const onnx::ModelProto& model,
                                              const TritonOptions& options, bool replace);

}  // namespace toptag
