// Where a step's time goes: wall time per named phase, summed while profiling is on
// (bench_resnet --profile). A phase's time excludes the phases nested in it, so the entries add up
// to the profiled total. Off (the default), a scope costs one branch. Scopes opened inside an OpenMP
// parallel region are ignored: phases are timed from the thread that runs the step.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace toptag {

class ProfileScope {
 public:
  explicit ProfileScope(const char* name);
  ~ProfileScope();
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  const char* name_ = nullptr;  // null: not recording
  std::chrono::steady_clock::time_point start_;
  double nested_seconds_ = 0;
  ProfileScope* parent_ = nullptr;
};

struct ProfileEntry {
  std::string name;
  double seconds = 0;  // exclusive
  int64_t calls = 0;
};

void set_profiling(bool on);
void reset_profile();
std::vector<ProfileEntry> profile_entries();  // largest first

}  // namespace toptag
