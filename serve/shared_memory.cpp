#include "serve/shared_memory.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>

#include "serve/request_error.h"

namespace toptag {

namespace {

// A region's name as Triton's clients write them, and safe in any reply: 1 to 128 of letters,
// digits, '_', '-' and '.'.
bool good_region_name(const std::string& name) {
  if (name.empty() || name.size() > 128) return false;
  for (char c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.') return false;
  return true;
}

}  // namespace

// One registered window of a shared-memory object, read and written through its descriptor (pread,
// pwrite), never through a mapping: a client that shrinks or punches holes in its object, even in
// the middle of a copy, makes the copy come up short (a refusal), not SIGBUS in the server. Closed
// when the last user lets go of it, so a region unregistered during a request stays valid until that
// request is done with it.
struct SharedMemoryRegistry::Region {
  SharedMemoryRegionStatus status;
  int fd = -1;

  ~Region() {
    if (fd >= 0) close(fd);
  }
};

SharedMemoryRegistry::~SharedMemoryRegistry() = default;

void SharedMemoryRegistry::register_region(const std::string& name, const std::string& key, uint64_t offset,
                                           uint64_t byte_size) {
  if (!good_region_name(name))
    throw invalid(
        fmt::format("shared-memory region name '{}' must be 1 to 128 letters, digits, '_', '-' or '.'", clip(name)));
  if (byte_size == 0) throw invalid(fmt::format("shared-memory region '{}' has byte_size 0", name));
  if (offset > (uint64_t{1} << 48) || byte_size > (uint64_t{1} << 48))
    throw invalid(
        fmt::format("shared-memory region '{}': offset {} or byte_size {} is too large", name, offset, byte_size));
  // A key is a POSIX shared-memory name: "/name", no other slash (shm_open's rule; it keeps the
  // client from naming an arbitrary file).
  if (key.size() < 2 || key[0] != '/' || key.find('/', 1) != std::string::npos || key.size() > 255)
    throw invalid(fmt::format("shared-memory key '{}' of region '{}' is not a POSIX shared-memory name (\"/name\")",
                              clip(key), name));
  std::lock_guard lock(mutex_);
  if (regions_.contains(name)) throw invalid(fmt::format("shared-memory region '{}' is already registered", name));
  if (regions_.size() >= kMaxRegions)
    throw invalid(fmt::format("{} shared-memory regions are registered, the most this server holds", kMaxRegions));
  auto r = std::make_shared<Region>();
  r->status = {name, key, offset, byte_size};
  r->fd = shm_open(key.c_str(), O_RDWR, 0);
  if (r->fd < 0)
    throw invalid(
        fmt::format("cannot open shared-memory key '{}' of region '{}': {}", clip(key), name, std::strerror(errno)));
  struct stat st {};
  if (fstat(r->fd, &st) != 0 || static_cast<uint64_t>(st.st_size) < offset + byte_size)
    throw invalid(fmt::format("shared-memory region '{}': offset {} + byte_size {} is past the end of '{}' ({} bytes)",
                              name, offset, byte_size, clip(key), static_cast<uint64_t>(st.st_size)));
  regions_.emplace(name, std::move(r));
}

void SharedMemoryRegistry::unregister(const std::string& name) {
  std::lock_guard lock(mutex_);
  if (name.empty())
    regions_.clear();
  else
    regions_.erase(name);  // an unknown name is no error, as in Triton: cleanup may repeat itself
}

std::vector<SharedMemoryRegionStatus> SharedMemoryRegistry::status(const std::string& name) const {
  std::lock_guard lock(mutex_);
  std::vector<SharedMemoryRegionStatus> out;
  if (name.empty()) {
    for (const auto& [n, r] : regions_) out.push_back(r->status);
    return out;
  }
  const auto it = regions_.find(name);
  if (it == regions_.end())
    throw RequestError(RequestError::Kind::not_found,
                       fmt::format("no shared-memory region named '{}' is registered", clip(name)));
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
  return r;
}

namespace {

RequestError shrunk(const std::string& what, const SharedMemoryRegionStatus& s, int error) {
  return invalid(fmt::format("{}: the object '{}' behind shared-memory region '{}' no longer holds it{}", what,
                             clip(s.key), s.name, error ? fmt::format(" ({})", std::strerror(error)) : ""));
}

}  // namespace

void SharedMemoryRegistry::read(const std::string& name, uint64_t offset, uint64_t bytes, void* out,
                                const std::string& what) const {
  const auto r = find(name, offset, bytes, what);
  auto* dst = static_cast<unsigned char*>(out);
  for (uint64_t done = 0; done < bytes;) {
    const ssize_t n = pread(r->fd, dst + done, bytes - done, static_cast<off_t>(r->status.offset + offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw shrunk(what, r->status, n < 0 ? errno : 0);  // 0: the object ends before the window does
    done += static_cast<uint64_t>(n);
  }
}

void SharedMemoryRegistry::write(const std::string& name, uint64_t offset, const void* data, uint64_t bytes,
                                 const std::string& what) const {
  const auto r = find(name, offset, bytes, what);
  // A write past the object's end would grow it again: check first that the client has not shrunk it.
  struct stat st {};
  if (fstat(r->fd, &st) != 0 || static_cast<uint64_t>(st.st_size) < r->status.offset + offset + bytes)
    throw shrunk(what, r->status, 0);
  const auto* src = static_cast<const unsigned char*>(data);
  for (uint64_t done = 0; done < bytes;) {
    const ssize_t n = pwrite(r->fd, src + done, bytes - done, static_cast<off_t>(r->status.offset + offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw shrunk(what, r->status, n < 0 ? errno : 0);  // ENOSPC: the shared-memory filesystem is full
    done += static_cast<uint64_t>(n);
  }
}

}  // namespace toptag
