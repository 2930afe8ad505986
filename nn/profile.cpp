#include "nn/profile.h"

#include <omp.h>

#include <algorithm>
#include <map>
#include <mutex>

namespace toptag {

namespace {

bool profiling = false;
thread_local ProfileScope* innermost = nullptr;
std::mutex entries_mutex;
std::map<std::string, ProfileEntry> entries;

}  // namespace

ProfileScope::ProfileScope(const char* name) {
  if (!profiling || omp_in_parallel()) return;
  name_ = name;
  parent_ = innermost;
  innermost = this;
  start_ = std::chrono::steady_clock::now();
}

ProfileScope::~ProfileScope() {
  if (!name_) return;
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  innermost = parent_;
  if (parent_) parent_->nested_seconds_ += total;
  std::lock_guard lock(entries_mutex);
  ProfileEntry& e = entries[name_];
  e.name = name_;
  e.seconds += total - nested_seconds_;
  e.calls += 1;
}

void set_profiling(bool on) {
  profiling = on;
}

void reset_profile() {
  std::lock_guard lock(entries_mutex);
  entries.clear();
}

std::vector<ProfileEntry> profile_entries() {
  std::lock_guard lock(entries_mutex);
  std::vector<ProfileEntry> out;
  for (const auto& [name, e] : entries) out.push_back(e);
  std::sort(out.begin(), out.end(), [](const ProfileEntry& a, const ProfileEntry& b) { return a.seconds > b.seconds; });
  return out;
}

}  // namespace toptag
