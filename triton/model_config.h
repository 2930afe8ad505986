// What toptag serve and toptag export both tell Triton's clients about a model: the tensor names,
// the one version, the batching defaults, and Triton's ModelConfig (triton/proto/model_config.proto,
// a subset of Triton's), built by one function. export writes it as a repository's config.pbtxt;
// serve answers it over gRPC (ModelConfig) and HTTP (/v2/models/NAME/config).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace inference {
class ModelConfig;
}  // namespace inference

namespace toptag {

// The served interface (serve/service.h) and the exported graph's (export/onnx_export.h).
inline constexpr const char* kImagesTensor = "images";                // input: (batch, C, H, W)
inline constexpr const char* kConstituentsTensor = "constituents";    // input, serve only: (batch, 200, 4)
inline constexpr const char* kProbabilitiesTensor = "probabilities";  // output: (batch, 2)
inline constexpr const char* kFeaturesTensor = "features";            // output: (batch, F)

inline constexpr const char* kDefaultModelName = "toptag";
inline constexpr const char* kModelVersion = "1";  // the one version serve reports and export writes
// Triton's dynamic batcher settings, as toptag serve's defaults: the most images per execution, and
// how long a batch may wait to fill.
inline constexpr int64_t kDefaultMaxBatch = 64;
inline constexpr int64_t kDefaultMaxQueueDelayUs = 2000;

// One input or output, FP32 (the only type toptag's models exchange).
struct TritonTensor {
  std::string name;
  std::vector<int64_t> dims;  // with the leading batch dimension, which must be -1
  bool optional = false;      // inputs: a request may leave it out
};

struct TritonModel {
  std::string name = kDefaultModelName;
  std::string platform, backend;  // "" : not written
  int64_t max_batch = kDefaultMaxBatch;
  int64_t max_queue_delay_us = kDefaultMaxQueueDelayUs;
  int instances = 0;  // an instance_group of this many CPU instances; 0: none written (Triton's default)
  std::vector<TritonTensor> inputs, outputs;
};

// Throws unless `name` can be a Triton model name and a directory: non-empty, letters, digits, '_',
// '-' and '.', and not "." or "..".
void check_triton_model_name(const std::string& name);

// Triton's ModelConfig for `model`: max_batch_size > 0, so every tensor's dims leave out the batch
// dimension (Triton adds it back), and dynamic_batching with the queue delay. Throws toptag::Error
// naming the tensor or setting that Triton cannot carry (a batch dimension that is not the leading
// -1, another variable dimension, a max batch outside 1..2^31-1, a negative delay).
inference::ModelConfig triton_model_config(const TritonModel& model);

}  // namespace toptag
