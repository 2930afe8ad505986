// Shared by the libFuzzer targets: the tiny model every service-level fuzzer serves.
#pragma once

#include <memory>

#include "serve/service.h"

namespace toptag::fuzz {

// A resnet10 of width 4 on 16x16x1 images behind a one-instance engine, one thread, small batches:
// each input runs in milliseconds. Built once per process.
InferenceService& tiny_service();

}  // namespace toptag::fuzz
