// Shared by the libFuzzer targets: the tiny model every service-level fuzzer serves.
#pragma once

#include <memory>

#include "serve/service.h"

namespace toptag::fuzz {

// A resnet10 of width 4 on 16x16x1 images behind a one-instance engine, one thread, small batches:
// each input runs in milliseconds. Built once per process, with the shared-memory object
// kSharedMemoryKey (64 kB of zeros) registered as region kSharedMemoryRegion, so that inputs can
// read and write it; they can register it again under other names.
InferenceService& tiny_service();
inline constexpr const char* kSharedMemoryKey = "/toptag_fuzz";
inline constexpr const char* kSharedMemoryRegion = "fuzz";

}  // namespace toptag::fuzz
