// Clients of the KServe v2 protocol: gRPC (grpc://host:port) and HTTP (http://host:port), able to
// call toptag serve or NVIDIA Triton. One client per thread; a gRPC client shares nothing mutable.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "eval/predictions.h"
#include "nn/check.h"
#include "triton/model_config.h"

namespace toptag {

// A failed call; `retryable` for transport problems and an unavailable server, not for refused requests.
class ClientError : public Error {
 public:
  ClientError(const std::string& message, bool retryable) : Error(message), retryable_(retryable) {}
  bool retryable() const { return retryable_; }

 private:
  bool retryable_;
};

struct RemoteTensor {
  std::string name, datatype;
  std::vector<int64_t> shape;
};

struct RemoteModel {
  std::string name, platform;
  std::vector<RemoteTensor> inputs, outputs;
  const RemoteTensor* input(const std::string& name) const;
};

struct InferReply {
  std::vector<float> probabilities;  // n x 2
  std::vector<float> features;       // n x F when requested
};

// A client's two POSIX shared-memory objects (its inputs', its outputs'), as registered with a server
// on the same machine (Triton's system shared memory); removed when the client is done.
class ClientSharedMemory;

class InferenceClient {
 public:
  // url: grpc://HOST:PORT or http://HOST:PORT. Throws for another scheme.
  static std::unique_ptr<InferenceClient> connect(const std::string& url, const std::string& model,
                                                  int64_t timeout_ms = 60000);
  virtual ~InferenceClient();

  virtual bool ready() = 0;  // server live and model ready
  virtual RemoteModel metadata() = 0;
  // The model's max_batch_size from the server's ModelConfig (Triton's model_configuration): the
  // most jets one request may hold (0: the model takes no batch dimension).
  virtual int64_t max_batch() = 0;
  // One call: input "images" [n, C, H, W] or "constituents" [n, 200, 4], FP32 row-major.
  virtual InferReply infer(const std::string& input, const std::vector<int64_t>& shape, std::span<const float> values,
                           bool want_features) = 0;

  // From now on, inputs go to the server and outputs come back through system shared memory, as
  // SonicTriton does on the same machine: two objects of `input_bytes` and `output_bytes` are made
  // and registered with the server, and unregistered and removed with the client. Throws
  // ClientError if the server cannot map them (another machine, or no shared-memory support).
  void use_shared_memory(size_t input_bytes, size_t output_bytes);

 protected:
  virtual void register_region(const std::string& name, const std::string& key, size_t bytes) = 0;
  virtual void unregister_region(const std::string& name) = 0;  // best effort, never throws
  // Unregisters and removes the shared memory, if any: each client's destructor calls it, while
  // unregister_region can still be called.
  void release_shared_memory();
  std::unique_ptr<ClientSharedMemory> shared_memory_;
};

struct RemotePredictOptions {
  std::string url, model = kDefaultModelName;
  int concurrency = 16;
  int retries = 3;  // per request, with exponential back-off
  int64_t max_jets = 0;
  bool features = false;       // collect the featurizer outputs too
  bool shared_memory = false;  // send and receive through system shared memory (a server on this machine)
  bool show_progress = true;
};

struct RemotePredictResult {
  Predictions predictions;
  std::vector<float> features;  // n x F
  int64_t feature_dim = 0;
  int64_t retried = 0;
  double seconds = 0;
  NonFiniteReport dropped;
};

// Runs `attempt` until it returns; a retryable ClientError (a lost connection, an unavailable server)
// is tried again up to `retries` times, after 50, 100, 200 ... ms. Anything else, and the last
// failure, is rethrown. Returns how many retries it took.
int retry_with_backoff(int retries, const std::function<void()>& attempt);

// Sends every jet of `file` in its own request (one event per request, as a CMSSW job does), with
// `concurrency` requests in flight: constituents for jet files, images for image files.
RemotePredictResult predict_remote(const JetFile& file, const RemotePredictOptions& options);

}  // namespace toptag
