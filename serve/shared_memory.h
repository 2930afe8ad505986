// System shared memory (Triton's shared_memory extension): a client on the same machine registers
// POSIX shared-memory objects (shm_open keys) as named regions, then sends inputs and receives
// outputs through them instead of in the messages. This is the paper's "on premises" case.
//
// Nothing a client does with its object can crash the server: the server reads and writes it with
// pread and pwrite on its descriptor, never through a mapping, so an object that a client shrinks
// (ftruncate), even during a copy, makes the copy come up short and the request refused, where
// touching a mapped page past the object's end would be SIGBUS. Every access is bounded by the
// region's window. This costs nothing: the tensors are copied once either way.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace toptag {

struct SharedMemoryRegionStatus {
  std::string name, key;
  uint64_t offset = 0, byte_size = 0;
};

class SharedMemoryRegistry {
 public:
  static constexpr size_t kMaxRegions = 256;

  SharedMemoryRegistry() = default;
  SharedMemoryRegistry(const SharedMemoryRegistry&) = delete;
  SharedMemoryRegistry& operator=(const SharedMemoryRegistry&) = delete;
  ~SharedMemoryRegistry();  // closes every region

  // Opens [offset, offset + byte_size) of the object `key` as region `name`. Throws
  // RequestError(invalid) for a bad or duplicate name, a key that does not exist or cannot be
  // opened, a window past the object's end, an empty window or too many regions.
  void register_region(const std::string& name, const std::string& key, uint64_t offset, uint64_t byte_size);
  // Closes region `name` ("": every region); an unknown name is no error, as in Triton.
  void unregister(const std::string& name);
  // Region `name`, or every region ("": sorted by name). Throws RequestError(not_found) for an
  // unknown name.
  std::vector<SharedMemoryRegionStatus> status(const std::string& name) const;

  // Copies `bytes` bytes from `offset` within region `name` into `out`, or `bytes` bytes of `data` to
  // it. Throws RequestError(invalid) naming `what` (the tensor) if the region is unknown, the range
  // leaves the region, or the object no longer holds the range (the client shrank it).
  void read(const std::string& name, uint64_t offset, uint64_t bytes, void* out, const std::string& what) const;
  void write(const std::string& name, uint64_t offset, const void* data, uint64_t bytes, const std::string& what) const;
  // The checks of read and write, without the copy.
  void check(const std::string& name, uint64_t offset, uint64_t bytes, const std::string& what) const {
    find(name, offset, bytes, what);
  }

 private:
  struct Region;
  std::shared_ptr<const Region> find(const std::string& name, uint64_t offset, uint64_t bytes,
                                     const std::string& what) const;

  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<const Region>> regions_;
};

}  // namespace toptag
