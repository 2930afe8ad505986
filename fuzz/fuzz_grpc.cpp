// libFuzzer target: any bytes as a serialized gRPC ModelInferRequest into answer_grpc_infer, the
// validation and inference path of the gRPC front end; and the same bytes as a ModelConfigRequest
// and a ModelStatisticsRequest (their name and version are ModelInferRequest's model_name and
// model_version, fields 1 and 2) into what those calls answer, printed as the HTTP API's JSON too;
// and as a SystemSharedMemoryRegisterRequest, registered, looked up and unregistered (the seeds name
// the fuzz object, fuzz::kSharedMemoryKey, which inputs also read and write as region "fuzz").
// Refusals are RequestErrors; anything else (a crash, an overflow, an uncaught exception) is a finding.
#include "fuzz/fuzz_common.h"
#include "inference.pb.h"
#include "serve/extensions.h"
#include "serve/grpc_frontend.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace toptag;
  inference::ModelInferRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  inference::ModelInferResponse response;
  try {
    answer_grpc_infer(fuzz::tiny_service(), request, response);
  } catch (const RequestError&) {
  }
  inference::ModelConfigRequest config;
  if (config.ParseFromArray(data, static_cast<int>(size))) {
    try {
      message_json(model_config(fuzz::tiny_service(), config.name(), config.version())).dump();
    } catch (const RequestError&) {
    }
  }
  inference::ModelStatisticsRequest statistics;
  if (statistics.ParseFromArray(data, static_cast<int>(size))) {
    try {
      message_json(model_statistics(fuzz::tiny_service(), statistics.name(), statistics.version())).dump();
    } catch (const RequestError&) {
    }
  }
  inference::SystemSharedMemoryRegisterRequest region;
  if (region.ParseFromArray(data, static_cast<int>(size)) && region.name() != fuzz::kSharedMemoryRegion) {
    SharedMemoryRegistry& registry = fuzz::tiny_service().shared_memory();
    try {
      registry.register_region(region.name(), region.key(), region.offset(), region.byte_size());
      registry.status(region.name());
      registry.unregister(region.name());
    } catch (const RequestError&) {
    }
  }
  return 0;
}
