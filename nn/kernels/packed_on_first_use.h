// Weights packed by the first call that needs them, once: a layer's Winograd transform
// (nn/inference_plan.h), int8's word panels (nn/kernels/bfp.h). Concurrent callers (a server's
// requests) wait for that one, and a model that never takes the path never holds the memory.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>

namespace toptag {

// Packed must have an `int64_t toptag_packed_bytes(const Packed&)` found by argument-dependent lookup
// (a name of its own: the member packed_bytes() would hide a free function of that name).
template <class Packed>
class PackedOnFirstUse {
 public:
  // The packed weights, made by pack() on the first call.
  template <class Pack>
  const Packed& get(Pack&& pack) const {
    std::call_once(once_, [&] {
      packed_.emplace(pack());
      ready_.store(true, std::memory_order_release);
    });
    return *packed_;
  }

  int64_t packed_bytes() const {  // 0 until packed
    return ready_.load(std::memory_order_acquire) ? toptag_packed_bytes(*packed_) : 0;
  }

 private:
  mutable std::once_flag once_;
  mutable std::optional<Packed> packed_;
  mutable std::atomic<bool> ready_{false};
};

}  // namespace toptag
