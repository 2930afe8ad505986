// System shared memory (Triton's shared_memory extension): a client on the same machine registers
// POSIX shared-memory objects (shm_open keys) as named regions, then sends inputs and receives
// outputs through them instead of in the messages. This is the paper's "on premises" case.
//
// Nothing a client does with its object can crash the server: a region is checked against the
// object's size when registered and again before every read or write (a client may shrink its object
// with ftruncate at any time; touching pages past its end would be SIGBUS), and every access is
// bounded by the region's window. A client that shrinks the object between that check and the copy
// itself can still cause SIGBUS: no user-space check closes that window (Triton has it too).
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
  ~SharedMemoryRegistry();  // unmaps every region

  // Maps [offset, offset + byte_size) of the object `key` as region `name`. Throws
  // RequestError(invalid) for a duplicate name, a key that does not exist or cannot be opened, a
  // window past the object's end, an empty window or too many regions.
  void register_region(const std::string& name, const std::string& key, uint64_t offset, uint64_t byte_size);
  // Unmaps region `name` ("": every region). Throws RequestError(invalid) for an unknown name.
  void unregister(const std::string& name);
  // Region `name`, or every region ("": sorted by name). Throws RequestError(invalid) for an unknown name.
  std::vector<SharedMemoryRegionStatus> status(const std::string& name) const;

  // Copies `bytes` bytes from `offset` within region `name` into `out`, or `bytes` bytes of `data` to
  // it. Throws RequestError(invalid) naming `what` (the tensor) if the region is unknown, the range
  // leaves the region, or the object has shrunk since it was registered.
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
