#include "fuzz/fuzz_common.h"

#include "nn/parallel.h"

namespace toptag::fuzz {

InferenceService& tiny_service() {
  static BatchingEngine* engine = [] {
    set_num_threads(1);
    Tagger t;
    t.model = std::make_unique<ResNet>(ResNetConfig{"resnet10", 1, 4, 16, 2}, 5);
    t.images.size = 16;
    EngineOptions o;
    o.instances = 1, o.threads = 1, o.max_batch = 8, o.max_queue = 64;
    return new BatchingEngine(std::move(t), o);  // lives as long as the process: no teardown race
  }();
  static InferenceService* service = [] {
    ServiceLimits limits;
    limits.max_request_jets = 32;
    return new InferenceService(*engine, "toptag", limits);
  }();
  return *service;
}

}  // namespace toptag::fuzz
