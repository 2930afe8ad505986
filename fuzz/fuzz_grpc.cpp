// libFuzzer target: any bytes as a serialized gRPC ModelInferRequest into answer_grpc_infer, the
// validation and inference path of the gRPC front end. Refusals are RequestErrors; anything else
// (a crash, an overflow, an uncaught exception) is a finding.
#include "fuzz/fuzz_common.h"
#include "inference.pb.h"
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
  return 0;
}
