// One thread setting for everything: OpenBLAS (built on OpenMP, Debian's libopenblas-openmp) and our
// own OpenMP loops share one pool of `threads` workers. OpenBLAS called from inside one of our
// parallel regions runs single-threaded, so the two never oversubscribe the cores.
//
// The default count is the CPUs this process may use, not the machine's: the smaller of its affinity
// mask (taskset, Slurm's --cpus-per-task, mpirun's --bind-to) and its cgroup's CPU quota (a container's
// --cpus). std::thread::hardware_concurrency() ignores both. Dividing them among MPI ranks that share
// them is cluster/'s job (cluster/world.h); nothing here knows of MPI.
#pragma once

#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace toptag {

// n <= 0 means usable_cpus().count. Applies to the calling process.
void set_num_threads(int n);
int num_threads();

// OpenMP (libgomp) keeps a pool of worker threads for each thread that opens a parallel region, and
// once a process holds more of them than it may use CPUs, every waiting worker spins about 100 times
// instead of 300,000 before it sleeps, so that each parallel region pays for waking its team. A
// server whose main thread had loaded the model then computed a quantized 40x40 ResNet-50 in 8.4 ms
// instead of 1.3 ms. A long-lived process does its one-off parallel work (loading, packing) here:
// `work` runs on a thread, with the caller's thread count, that ends with it, and takes its pool
// along. Its exception is the caller's.
void run_on_passing_thread(const std::function<void()>& work);
// While it lives, this thread's OpenMP regions run on it alone and open no pool: for threads that
// do not compute the model (a server's request handlers). The thread's count is restored after.
class SerialOpenMp {
 public:
  SerialOpenMp();
  ~SerialOpenMp();
  SerialOpenMp(const SerialOpenMp&) = delete;
  SerialOpenMp& operator=(const SerialOpenMp&) = delete;

 private:
  int saved_;
};

// A cgroup CPU limit: `quota` microseconds of CPU time every `period` (cgroup v2 cpu.max, or v1
// cpu.cfs_quota_us / cpu.cfs_period_us), which is ceil(quota / period) CPUs busy at once.
struct CpuQuota {
  long long quota = 0, period = 0;
  int version = 2;  // cgroup v1 or v2, for the reason text
  int cpus() const;
};

// What bounds this process's CPUs, and the count they allow.
struct CpuBudget {
  int count = 1;          // threads to run by default: the smallest of the limits below, at least 1
  std::string reason;     // why: "1 CPU in this process's affinity mask of 2", "cgroup v2 quota 150000/100000 -> 2"
  int hardware = 1;       // CPUs online in the machine
  std::vector<int> mask;  // the CPU ids in the affinity mask, ascending
  std::optional<CpuQuota> quota;
};

// This process's budget, read once from the kernel (sched_getaffinity, /proc/self/cgroup, the cgroup
// files) and remembered.
const CpuBudget& usable_cpus();

// --- the pieces, separate so that tests can feed them made-up files -------------------------------

// Reads a whole file; nullopt when it cannot be read.
using ReadFile = std::function<std::optional<std::string>(const std::string& path)>;

// cgroup v2 cpu.max: "max 100000" (no limit) or "QUOTA PERIOD".
std::optional<CpuQuota> parse_cpu_max(std::string_view text);
// The tightest CPU quota of this process's cgroup and its ancestors, v2 or v1, given the contents of
// /proc/self/cgroup and /proc/self/mountinfo and a way to read the cgroup files.
std::optional<CpuQuota> cgroup_cpu_quota(std::string_view proc_self_cgroup, std::string_view mountinfo,
                                         const ReadFile& read);
// Combines the limits into a budget.
CpuBudget make_budget(int hardware, std::vector<int> mask, std::optional<CpuQuota> quota);

// A process's budget when other processes on its machine (MPI ranks) may use some of its CPUs.
// masks[me] is this process's affinity mask, the others its neighbours'. Each CPU of its mask counts
// 1/k where k of the processes may run on it: ranks bound to disjoint cores each keep their whole
// mask, unbound ranks divide the machine. A cgroup quota is divided among all of them (the ranks of
// one job on one machine share its container or its Slurm step's cgroup). At least 1.
CpuBudget share_with_neighbours(const CpuBudget& mine, std::span<const std::vector<int>> masks, size_t me);

}  // namespace toptag
