#include "fuzz/fuzz_common.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

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
    auto* s = new InferenceService(*engine, "toptag", limits);
    const int fd = shm_open(kSharedMemoryKey, O_CREAT | O_RDWR, 0600);
    if (fd < 0 || ftruncate(fd, 65536) != 0) __builtin_trap();
    close(fd);
    s->shared_memory().register_region(kSharedMemoryRegion, kSharedMemoryKey, 0, 65536);
    return s;
  }();
  return *service;
}

}  // namespace toptag::fuzz
