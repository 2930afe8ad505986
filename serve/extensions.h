// Triton's protocol extensions beyond KServe v2, as protobuf messages both front ends answer with:
// model_configuration (gRPC ModelConfig, HTTP GET /v2/models/NAME[/versions/V]/config) and
// statistics (gRPC ModelStatistics, HTTP GET /v2/models[/NAME[/versions/V]]/stats). The gRPC
// front end sends the message; the HTTP one sends it as JSON the way Triton's HTTP API does
// (message_json), so the two protocols cannot disagree.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "inference.pb.h"
#include "serve/service.h"

namespace toptag {

// The configuration of model `name` (version "" or "1"): triton_model_config(service.triton_model()).
// Throws RequestError(not_found) naming an unknown model or version.
inference::ModelConfig model_config(const InferenceService& service, const std::string& name,
                                    const std::string& version);

// The statistics of model `name` (version "" or "1"), or of every model (this server's one) when
// `name` is "": the service's RequestStatistics and the engine's executions by batch size. Throws
// RequestError(not_found) naming an unknown model or version.
inference::ModelStatisticsResponse model_statistics(const InferenceService& service, const std::string& name,
                                                    const std::string& version);

// A message as Triton's HTTP API writes one (protobuf's JSON mapping with the proto field names and
// every scalar field, defaults too), except that 64-bit integers are JSON numbers, not strings, as
// Triton also makes them. Enums by name, maps as objects, message fields only when set.
nlohmann::json message_json(const google::protobuf::Message& message);

}  // namespace toptag
