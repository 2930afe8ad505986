#include "io/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <string_view>

#include "nn/check.h"

namespace toptag {

namespace fs = std::filesystem;

namespace {

struct FileId {
  dev_t device;
  ino_t inode;
  bool operator==(const FileId&) const = default;
};

// The file `path` names after every symbolic link, or nullopt when there is none (yet).
std::optional<FileId> identity(const std::string& path) {
  struct stat s {};
  if (path.empty() || ::stat(path.c_str(), &s) != 0) return std::nullopt;
  return FileId{s.st_dev, s.st_ino};
}

// Whether `path` (existing or not) lies below the directory `dir`, through any link on the way.
bool lies_under(const std::string& path, const FileId& dir) {
  std::error_code e;
  for (fs::path p = fs::weakly_canonical(path, e).parent_path(); !e && !p.empty(); p = p.parent_path()) {
    if (identity(p.string()) == dir) return true;
    if (p == p.root_path()) break;
  }
  return false;
}

// The files this process's commands declared as read: no atomic write may replace one.
struct ReadFiles {
  std::mutex mutex;
  std::vector<std::pair<FileId, std::string>> files;
};
ReadFiles& read_files() {
  static ReadFiles r;
  return r;
}

// The permission bits a new file gets (0666 less the umask): mkstemp makes its file 0600, and a
// finished output should look like any other file the user writes. The umask is read from
// /proc/self/status, since umask() can only be read by changing it (a race with other threads).
mode_t new_file_mode() {
  static const mode_t mode = [] {
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);)
      if (line.rfind("Umask:", 0) == 0) return static_cast<mode_t>(0666 & ~std::stoul(line.substr(6), nullptr, 8));
    return static_cast<mode_t>(0644);
  }();
  return mode;
}

}  // namespace

FileUse& FileUse::reads(const std::string& flag, const std::string& path) {
  if (!path.empty()) reads_.push_back({flag, path});
  return *this;
}

FileUse& FileUse::writes(const std::string& flag, const std::string& path) {
  if (!path.empty()) writes_.push_back({flag, path});
  return *this;
}

FileUse& FileUse::writes_in(const std::string& flag, const std::string& dir, const std::vector<std::string>& names) {
  if (dir.empty()) return *this;
  for (const std::string& name : names) writes_.push_back({flag, (fs::path(dir) / name).string()});
  return *this;
}

FileUse& FileUse::replaces(const std::string& flag, const std::string& dir) {
  if (!dir.empty()) replaced_.push_back({flag, dir});
  return *this;
}

void FileUse::check() const {
  for (const Named& out : writes_) {
    const std::optional<FileId> id = identity(out.path);
    if (!id) continue;
    for (const Named& in : reads_)
      if (identity(in.path) == id)
        fail("{} {} is the input {} {}: writing it would destroy the input", out.flag, out.path, in.flag, in.path);
  }
  for (const Named& dir : replaced_) {
    const std::optional<FileId> id = identity(dir.path);
    if (!id) continue;
    for (const Named& in : reads_)
      if (lies_under(in.path, *id))
        fail("{} {} would be replaced whole, and it holds the input {} {}: writing it would destroy the input",
             dir.flag, dir.path, in.flag, in.path);
    for (const Named& out : writes_)
      if (lies_under(out.path, *id))
        fail("{} {} would be replaced whole, and the output {} {} would go with it", dir.flag, dir.path, out.flag,
             out.path);
  }
  ReadFiles& r = read_files();
  std::lock_guard lock(r.mutex);
  for (const Named& in : reads_)
    if (const std::optional<FileId> id = identity(in.path)) r.files.emplace_back(*id, in.path);
}

void refuse_replacing_an_input(const std::string& path) {
  const std::optional<FileId> id = identity(path);
  if (!id) return;
  const bool directory = fs::is_directory(path);
  ReadFiles& r = read_files();
  std::lock_guard lock(r.mutex);
  for (const auto& [input, input_path] : r.files) {
    if (input == *id) fail("{} is the input {}: writing it would destroy the input", path, input_path);
    if (directory && lies_under(input_path, *id))
      fail("{} holds the input {}: replacing it would destroy the input", path, input_path);
  }
}

constexpr std::string_view kTempMark = ".tmp-";  // TARGET.tmp-XXXXXX[suffix], XXXXXX chosen by mkstemps
constexpr size_t kTempUnique = 6;

std::string temp_file_target(const std::string& path) {
  const size_t at = path.rfind(kTempMark);
  if (at == std::string::npos || path.size() < at + kTempMark.size() + kTempUnique) return path;
  return path.substr(0, at);
}

TempFile::TempFile(const std::string& target, const std::string& suffix) {
  std::string name = target + std::string(kTempMark) + std::string(kTempUnique, 'X') + suffix;
  const int fd = ::mkstemps(name.data(), static_cast<int>(suffix.size()));
  if (fd < 0) {
    const fs::path dir = fs::path(target).parent_path();
    fail("{}: cannot write in {}: {}", target, dir.empty() ? std::string(".") : dir.string(), std::strerror(errno));
  }
  ::fchmod(fd, new_file_mode());
  ::close(fd);
  path_ = std::move(name);
}

TempDir::TempDir(const std::string& prefix) {
  std::string name = prefix + std::string(kTempMark) + std::string(kTempUnique, 'X');
  if (::mkdtemp(name.data()) == nullptr) fail("{}: cannot create a directory: {}", name, std::strerror(errno));
  ::chmod(name.c_str(), new_file_mode() | 0111);  // mkdtemp makes it 0700; 0755 under umask 022
  path_ = std::move(name);
}

TempDir::~TempDir() {
  std::error_code ignored;
  if (!path_.empty()) fs::remove_all(path_, ignored);
}

void TempDir::remove() {
  std::error_code e;
  fs::remove_all(path_, e);
  if (e) fail("{}: cannot remove: {}", path_, e.message());
  path_.clear();
}

TempFile::~TempFile() {
  if (!moved_) ::unlink(path_.c_str());
}

void TempFile::move_to(const std::string& target) {
  refuse_replacing_an_input(target);
  if (std::rename(path_.c_str(), target.c_str()) != 0)
    fail("{}: cannot move the finished file into place: {}", target, std::strerror(errno));
  moved_ = true;
}

void check_writable_directory(const std::string& dir, const std::string& why) {
  try {
    TempFile probe((fs::path(dir) / ".toptag-write-probe").string());
  } catch (const Error& e) {
    fail("{} is not writable: {} ({})", dir, why, e.what());
  }
}

void write_text_atomically(const std::string& path, const std::string& text) {
  TempFile temp(path);
  const int fd = ::open(temp.path().c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot write: {}", path, std::strerror(errno));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int e = errno;
      ::close(fd);
      fail("{}: write failed: {}", path, std::strerror(e));
    }
    done += static_cast<size_t>(n);
  }
  const bool synced = ::fsync(fd) == 0;
  const int e = errno;
  if (::close(fd) != 0 || !synced) fail("{}: write failed: {}", path, std::strerror(synced ? errno : e));
  temp.move_to(path);
}

}  // namespace toptag
