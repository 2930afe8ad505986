#include "nn/parallel.h"

#include <fmt/format.h>
#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <exception>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <thread>

#include "nn/blas.h"

namespace toptag {

namespace {

int configured_threads = 0;

// Machines may have more CPUs than a cpu_set_t holds (1024): the set grows until the kernel takes it.
constexpr int kFirstMaskSize = 1024, kLargestMaskSize = 1 << 20;
// A share such as 3 x 1/3 sums to 0.999...: it still counts as a whole CPU.
constexpr double kShareSlack = 1e-6;

std::vector<int> affinity_mask() {
  for (int n = kFirstMaskSize; n <= kLargestMaskSize; n *= 2) {
    std::unique_ptr<cpu_set_t, void (*)(cpu_set_t*)> set(CPU_ALLOC(n), [](cpu_set_t* s) { CPU_FREE(s); });
    const size_t bytes = CPU_ALLOC_SIZE(n);
    if (sched_getaffinity(0, bytes, set.get()) == 0) {
      std::vector<int> ids;
      ids.reserve(static_cast<size_t>(CPU_COUNT_S(bytes, set.get())));
      for (int cpu = 0; cpu < n; ++cpu)
        if (CPU_ISSET_S(cpu, bytes, set.get())) ids.push_back(cpu);
      return ids;
    }
    if (errno != EINVAL) break;
  }
  return {};
}

int online_cpus() {
  const long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n > 0) return static_cast<int>(n);
  return std::max(1u, std::thread::hardware_concurrency());
}

std::optional<std::string> read_whole_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::optional<long long> parse_integer(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  long long v = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return v;
}

bool has_token(std::string_view list, std::string_view token) {
  for (size_t start = 0; start <= list.size();) {
    size_t comma = list.find(',', start);
    if (comma == std::string_view::npos) comma = list.size();
    if (list.substr(start, comma - start) == token) return true;
    start = comma + 1;
  }
  return false;
}

std::vector<std::string> lines_of(std::string_view text) {
  std::vector<std::string> lines;
  std::istringstream in{std::string(text)};
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// A cgroup hierarchy as this process sees it: where it is mounted, the cgroup path of the mount's
// root, and this process's cgroup path in it (from /proc/self/cgroup).
struct Hierarchy {
  std::string mount_point, mount_root, process_path;
};

// From /proc/self/mountinfo: "ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS... - FSTYPE SOURCE SUPER_OPTIONS".
// The cgroup v2 mount (`v1_controller` empty) or the v1 mount holding that controller.
std::optional<Hierarchy> find_mount(std::string_view mountinfo, const std::string& v1_controller) {
  for (const std::string& line : lines_of(mountinfo)) {
    std::istringstream in(line);
    std::string id, parent, device, root, mount_point, field;
    in >> id >> parent >> device >> root >> mount_point;
    while (in >> field && field != "-") {
    }
    std::string fstype, source, super_options;
    in >> fstype >> source >> super_options;
    if (v1_controller.empty() ? fstype == "cgroup2" : fstype == "cgroup" && has_token(super_options, v1_controller))
      return Hierarchy{mount_point, root, ""};
  }
  return std::nullopt;
}

// From /proc/self/cgroup: "0::/path" for v2, "N:cpu,cpuacct:/path" for v1's cpu controller.
std::optional<std::string> cgroup_path(std::string_view proc_self_cgroup, const std::string& v1_controller) {
  for (const std::string& line : lines_of(proc_self_cgroup)) {
    const size_t first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    const std::string controllers = line.substr(first + 1, second - first - 1);
    const bool match = v1_controller.empty() ? line.substr(0, first) == "0" && controllers.empty()
                                             : has_token(controllers, v1_controller);
    if (match) return line.substr(second + 1);
  }
  return std::nullopt;
}

// The directories of this process's cgroup and of its ancestors up to the mount's root, deepest first.
std::vector<std::string> cgroup_directories(const Hierarchy& h) {
  std::string relative;
  if (h.mount_root == "/")
    relative = h.process_path;
  else if (h.process_path.rfind(h.mount_root, 0) == 0 &&
           (h.process_path.size() == h.mount_root.size() || h.process_path[h.mount_root.size()] == '/'))
    relative = h.process_path.substr(h.mount_root.size());  // "/a" is below "/a", "/ab" is not
  std::vector<std::string> dirs;
  while (!relative.empty() && relative != "/") {
    dirs.push_back(h.mount_point + relative);
    const size_t slash = relative.rfind('/');
    if (slash == std::string::npos) break;
    relative.resize(slash);
  }
  dirs.push_back(h.mount_point);
  return dirs;
}

std::optional<CpuQuota> tightest(std::optional<CpuQuota> a, std::optional<CpuQuota> b) {
  if (!a) return b;
  if (!b) return a;
  return b->cpus() < a->cpus() ? b : a;
}

// This process's cgroup directory and its ancestors' in the hierarchy of `v1_controller` ("" for v2),
// deepest first; none when that hierarchy is not mounted or the process is not in it.
std::vector<std::string> process_cgroup_directories(std::string_view proc_self_cgroup, std::string_view mountinfo,
                                                    const std::string& v1_controller) {
  std::optional<Hierarchy> h = find_mount(mountinfo, v1_controller);
  std::optional<std::string> path = cgroup_path(proc_self_cgroup, v1_controller);
  if (!h || !path) return {};
  h->process_path = *path;
  return cgroup_directories(*h);
}

std::optional<CpuQuota> v2_quota(std::string_view proc_self_cgroup, std::string_view mountinfo, const ReadFile& read) {
  std::optional<CpuQuota> best;
  for (const std::string& dir : process_cgroup_directories(proc_self_cgroup, mountinfo, ""))
    if (std::optional<std::string> text = read(dir + "/cpu.max")) best = tightest(best, parse_cpu_max(*text));
  return best;
}

std::optional<CpuQuota> v1_quota(std::string_view proc_self_cgroup, std::string_view mountinfo, const ReadFile& read) {
  std::optional<CpuQuota> best;
  for (const std::string& dir : process_cgroup_directories(proc_self_cgroup, mountinfo, "cpu")) {
    const std::optional<std::string> quota = read(dir + "/cpu.cfs_quota_us"), period = read(dir + "/cpu.cfs_period_us");
    if (!quota || !period) continue;
    const std::optional<long long> q = parse_integer(*quota), p = parse_integer(*period);
    if (q && p && *q > 0 && *p > 0) best = tightest(best, CpuQuota{*q, *p, 1});  // -1: no limit
  }
  return best;
}

std::string cpus_text(size_t n) {
  return fmt::format("{} CPU{}", n, n == 1 ? "" : "s");
}

}  // namespace

int CpuQuota::cpus() const {
  return static_cast<int>(std::max(1LL, (quota + period - 1) / period));
}

std::optional<CpuQuota> parse_cpu_max(std::string_view text) {
  const size_t space = text.find(' ');
  if (space == std::string_view::npos) return std::nullopt;
  const std::optional<long long> quota = parse_integer(text.substr(0, space)),
                                 period = parse_integer(text.substr(space + 1));
  if (!quota || !period || *quota <= 0 || *period <= 0) return std::nullopt;  // "max": no limit
  return CpuQuota{*quota, *period, 2};
}

std::optional<CpuQuota> cgroup_cpu_quota(std::string_view proc_self_cgroup, std::string_view mountinfo,
                                         const ReadFile& read) {
  return tightest(v2_quota(proc_self_cgroup, mountinfo, read), v1_quota(proc_self_cgroup, mountinfo, read));
}

CpuBudget make_budget(int hardware, std::vector<int> mask, std::optional<CpuQuota> quota) {
  CpuBudget b;
  b.hardware = std::max(1, hardware);
  b.mask = std::move(mask);
  if (b.mask.empty())  // the kernel would not say: assume every CPU
    for (int cpu = 0; cpu < b.hardware; ++cpu) b.mask.push_back(cpu);
  b.quota = quota;
  const int in_mask = static_cast<int>(b.mask.size());
  if (quota && quota->cpus() < in_mask) {
    b.count = quota->cpus();
    b.reason = fmt::format("cgroup v{} quota {}/{} -> {}", quota->version, quota->quota, quota->period, b.count);
  } else if (in_mask < b.hardware) {
    b.count = in_mask;
    b.reason = fmt::format("{} in this process's affinity mask, of {} in the machine", cpus_text(in_mask), b.hardware);
  } else {
    b.count = b.hardware;
    b.reason = fmt::format("all {} of the machine", cpus_text(b.hardware));
  }
  return b;
}

const CpuBudget& usable_cpus() {
  static const CpuBudget budget = [] {
    const std::optional<std::string> cgroup = read_whole_file("/proc/self/cgroup"),
                                     mountinfo = read_whole_file("/proc/self/mountinfo");
    std::optional<CpuQuota> quota;
    if (cgroup && mountinfo) quota = cgroup_cpu_quota(*cgroup, *mountinfo, read_whole_file);
    return make_budget(online_cpus(), affinity_mask(), quota);
  }();
  return budget;
}

CpuBudget share_with_neighbours(const CpuBudget& mine, std::span<const std::vector<int>> masks, size_t me) {
  std::map<int, int> processes_on;  // CPU id -> processes whose mask holds it
  for (const std::vector<int>& mask : masks)
    for (int cpu : mask) ++processes_on[cpu];
  double share = 0;
  for (int cpu : masks[me]) share += 1.0 / processes_on[cpu];
  size_t sharing = 0;  // neighbours whose mask overlaps this process's
  for (size_t other = 0; other < masks.size(); ++other)
    if (other != me &&
        std::ranges::any_of(masks[other], [&](int cpu) { return std::ranges::binary_search(masks[me], cpu); }))
      ++sharing;
  CpuBudget b = mine;
  const int by_mask = std::max(1, static_cast<int>(share + kShareSlack));
  const std::string mask_text = fmt::format("{} in this rank's affinity mask", cpus_text(masks[me].size()));
  if (sharing == 0)
    b.reason = fmt::format("{}, which no other of the {} ranks on this machine shares", mask_text, masks.size());
  else
    b.reason = fmt::format("{} shared with {} other rank{} on this machine -> {}", mask_text, sharing,
                           sharing == 1 ? "" : "s", by_mask);
  b.count = by_mask;
  if (mine.quota) {
    const int by_quota = std::max(1, mine.quota->cpus() / static_cast<int>(masks.size()));
    if (by_quota < b.count) {
      b.count = by_quota;
      b.reason = fmt::format("cgroup v{} quota {}/{} -> {} divided among {} ranks on this machine", mine.quota->version,
                             mine.quota->quota, mine.quota->period, mine.quota->cpus(), masks.size());
    }
  }
  return b;
}

void set_num_threads(int n) {
  if (n <= 0) n = usable_cpus().count;
  configured_threads = n;
  omp_set_num_threads(n);
  set_blas_threads(n);
}

int num_threads() {
  return configured_threads > 0 ? configured_threads : omp_get_max_threads();
}

void run_on_passing_thread(const std::function<void()>& work) {
  const int threads = omp_get_max_threads();
  std::exception_ptr error;
  std::thread passing([&] {
    omp_set_num_threads(threads);
    try {
      work();
    } catch (...) {
      error = std::current_exception();
    }
  });
  passing.join();
  if (error) std::rethrow_exception(error);
}

SerialOpenMp::SerialOpenMp() : saved_(omp_get_max_threads()) {
  omp_set_num_threads(1);
}

SerialOpenMp::~SerialOpenMp() {
  omp_set_num_threads(saved_);
}

}  // namespace toptag
