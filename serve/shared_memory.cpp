#include "serve/shared_memory.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "serve/request_error.h"

namespace toptag {

// One mapped window of a shared-memory object; unmapped when the last user lets go of it, so a
// region unregistered during a request stays valid until that request is done with it.
struct SharedMemoryRegistry::Region {
  SharedMemoryRegionStatus status;
  int fd = -1;
  void* map = nullptr;  // the object's bytes [0, offset + byte_size)
  size_t map_bytes = 0;

  ~Region() {
    if (map) munmap(map, map_bytes);
    if (fd >= 0) close(fd);
  }
  unsigned char* bytes() const { return static_cast<unsigned char*>(map) + status.offset; }
  // Whether the object still holds the whole window: a client may have shrunk it.
  bool intact() const {
    struct stat st {};
    return fstat(fd, &st) == 0 && static_cast<uint64_t>(st.st_size) >= status.offset + status.byte_size;
  }
};

SharedMemoryRegistry::~SharedMemoryRegistry() = default;

void SharedMemoryRegistry::register_region(const std::string& name, const std::string& key, uint64_t offset,
                                           uint64_t byte_size) {
  if (name.empty()) throw invalid("a shared-memory region needs a name");
  if (byte_size == 0) throw invalid(fmt::format("shared-memory region '{}' has byte_size 0", clip(name)));
  if (offset > (uint64_t{1} << 48) || byte_size > (uint64_t{1} << 48))
    throw invalid(fmt::format("shared-memory region '{}': offset {} or byte_size {} is too large", clip(name), offset,
                              byte_size));
  // A key is a POSIX shared-memory name: "/name", no other slash (shm_open's rule; it keeps the
  // client from naming an arbitrary file).
  if (key.size() < 2 || key[0] != '/' || key.find('/', 1) != std::string::npos || key.size() > 255)
    throw invalid(fmt::format("shared-memory key '{}' of region '{}' is not a POSIX shared-memory name (\"/name\")",
                              clip(key), clip(name)));
  std::lock_guard lock(mutex_);
  if (regions_.contains(name))
    throw invalid(fmt::format("shared-memory region '{}' is already registered", clip(name)));
  if (regions_.size() >= kMaxRegions)
    throw invalid(fmt::format("{} shared-memory regions are registered, the most this server holds", kMaxRegions));
  auto r = std::make_shared<Region>();
  r->status = {name, key, offset, byte_size};
  r->fd = shm_open(key.c_str(), O_RDWR, 0);
  if (r->fd < 0)
    throw invalid(fmt::format("cannot open shared-memory key '{}' of region '{}': {}", clip(key), clip(name),
                              std::strerror(errno)));
  struct stat st {};
  if (fstat(r->fd, &st) != 0 || static_cast<uint64_t>(st.st_size) < offset + byte_size)
    throw invalid(fmt::format("shared-memory region '{}': offset {} + byte_size {} is past the end of '{}' ({} bytes)",
                              clip(name), offset, byte_size, clip(key), static_cast<uint64_t>(st.st_size)));
  r->map_bytes = offset + byte_size;
  r->map = mmap(nullptr, r->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
  if (r->map == MAP_FAILED) {
    r->map = nullptr;
    throw invalid(fmt::format("cannot map shared-memory key '{}' of region '{}': {}", clip(key), clip(name),
                              std::strerror(errno)));
  }
  regions_.emplace(name, std::move(r));
}

void SharedMemoryRegistry::unregister(const std::string& name) {
  std::lock_guard lock(mutex_);
  if (name.empty()) {
    regions_.clear();
    return;
  }
  if (regions_.erase(name) == 0)
    throw invalid(fmt::format("no shared-memory region named '{}' is registered", clip(name)));
}

std::vector<SharedMemoryRegionStatus> SharedMemoryRegistry::status(const std::string& name) const {
  std::lock_guard lock(mutex_);
  std::vector<SharedMemoryRegionStatus> out;
  if (name.empty()) {
    for (const auto& [n, r] : regions_) out.push_back(r->status);
    return out;
  }
  const auto it = regions_.find(name);
  if (it == regions_.end()) throw invalid(fmt::format("no shared-memory region named '{}' is registered", clip(name)));
  out.push_back(it->second->status);
  return out;
}

std::shared_ptr<const SharedMemoryRegistry::Region> SharedMemoryRegistry::find(const std::string& name, uint64_t offset,
                                                                               uint64_t bytes,
                                                                               const std::string& what) const {
  std::shared_ptr<const Region> r;
  {
    std::lock_guard lock(mutex_);
    const auto it = regions_.find(name);
    if (it == regions_.end())
      throw invalid(fmt::format("{} names shared-memory region '{}', which is not registered", what, clip(name)));
    r = it->second;
  }
  const uint64_t size = r->status.byte_size;
  if (offset > size || bytes > size - offset)
    throw invalid(fmt::format("{}: {} bytes at offset {} leave shared-memory region '{}' ({} bytes)", what, bytes,
                              offset, clip(name), size));
  if (!r->intact())
    throw invalid(
        fmt::format("{}: the object '{}' behind shared-memory region '{}' has shrunk since it was "
                    "registered",
                    what, clip(r->status.key), clip(name)));
  return r;
}

void SharedMemoryRegistry::read(const std::string& name, uint64_t offset, uint64_t bytes, void* out,
                                const std::string& what) const {
  const auto r = find(name, offset, bytes, what);
  if (bytes > 0) std::memcpy(out, r->bytes() + offset, bytes);
}

void SharedMemoryRegistry::write(const std::string& name, uint64_t offset, const void* data, uint64_t bytes,
                                 const std::string& what) const {
  const auto r = find(name, offset, bytes, what);
  if (bytes > 0) std::memcpy(r->bytes() + offset, data, bytes);
}

}  // namespace toptag
