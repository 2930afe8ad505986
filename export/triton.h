// A Triton model repository around an exported ONNX model, so that
//   tritonserver --model-repository DIR
// serves it with the ONNX Runtime backend and toptag predict --server / toptag perf talk to it as to
// toptag serve:
//   DIR/NAME/config.pbtxt   backend onnxruntime, max_batch_size, dynamic_batching, inputs, outputs
//   DIR/NAME/1/model.onnx   version 1, as toptag serve reports its model
// The config is triton/'s ModelConfig (the one toptag serve answers), derived from the model's own
// graph inputs and outputs and written in protobuf's text format.
#pragma once

#include <onnx/onnx_pb.h>

#include <cstdint>
#include <string>
#include <vector>

#include "triton/model_config.h"

namespace toptag {

struct TritonOptions {
  std::string model_name = kDefaultModelName;            // what clients ask for: toptag predict --server --model NAME
  int64_t max_batch = kDefaultMaxBatch;                  // max_batch_size: the most images per execution
  int64_t max_queue_delay_us = kDefaultMaxQueueDelayUs;  // dynamic batching's wait for a batch to fill
};

// The model as Triton's onnxruntime backend serves it: every graph input and output, which must be
// float32 with the symbolic batch as its leading dimension.
TritonModel triton_model(const onnx::ModelProto& model, const TritonOptions& options);

// config.pbtxt for `model`: triton_model_config(triton_model(model, options)) in text format, after a
// comment naming the checkpoint's architecture and quantization.
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
