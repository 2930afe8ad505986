// The CPUs a process may use (nn/parallel.h): cgroup v1 and v2 quotas read from made-up files, the
// affinity mask against the machine, and the share of ranks whose masks overlap.
#include <dlfcn.h>
#include <omp.h>
#include <sched.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <thread>

#include "nn/parallel.h"
#include "testing.h"

namespace toptag {
namespace {

// A file system of made-up files.
ReadFile files(std::map<std::string, std::string> contents) {
  return [contents = std::move(contents)](const std::string& path) -> std::optional<std::string> {
    auto it = contents.find(path);
    if (it == contents.end()) return std::nullopt;
    return it->second;
  };
}

const char* kV2Mountinfo =
    "24 30 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
const char* kV1Mountinfo =
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    "34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n";

TEST(CpuMax, ParsesQuotaAndNoLimit) {
  const std::optional<CpuQuota> q = parse_cpu_max("150000 100000\n");
  ASSERT_TRUE(q.has_value());
  EXPECT_EQ(q->quota, 150000);
  EXPECT_EQ(q->period, 100000);
  EXPECT_EQ(q->cpus(), 2);  // 1.5 CPUs: two threads, each busy part of the time
  EXPECT_FALSE(parse_cpu_max("max 100000\n").has_value());
  EXPECT_FALSE(parse_cpu_max("").has_value());
  EXPECT_EQ(parse_cpu_max("1000 100000")->cpus(), 1);  // at least one
}

TEST(CgroupQuota, V2WalksUpToTheTightestAncestor) {
  const char* cgroup = "0::/system.slice/job.scope\n";
  const ReadFile read = files({{"/sys/fs/cgroup/system.slice/job.scope/cpu.max", "max 100000\n"},
                               {"/sys/fs/cgroup/system.slice/cpu.max", "300000 100000\n"}});
  const std::optional<CpuQuota> q = cgroup_cpu_quota(cgroup, kV2Mountinfo, read);
  ASSERT_TRUE(q.has_value());
  EXPECT_EQ(q->cpus(), 3);
  EXPECT_EQ(q->version, 2);
}

TEST(CgroupQuota, V2InsideAContainerReadsTheMountsRoot) {
  const ReadFile read = files({{"/sys/fs/cgroup/cpu.max", "200000 100000\n"}});
  EXPECT_EQ(cgroup_cpu_quota("0::/\n", kV2Mountinfo, read)->cpus(), 2);
}

TEST(CgroupQuota, V1CpuController) {
  const char* cgroup = "12:cpuset:/\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n";
  const ReadFile read = files({{"/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "250000\n"},
                               {"/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n"},
                               {"/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n"},
                               {"/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"}});
  const std::optional<CpuQuota> q = cgroup_cpu_quota(cgroup, kV1Mountinfo, read);
  ASSERT_TRUE(q.has_value());
  EXPECT_EQ(q->cpus(), 3);
  EXPECT_EQ(q->version, 1);
}

TEST(CgroupQuota, V1WithoutLimitOrFiles) {
  const char* cgroup = "4:cpu,cpuacct:/\n";
  EXPECT_FALSE(cgroup_cpu_quota(cgroup, kV1Mountinfo,
                                files({{"/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n"},
                                       {"/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"}}))
                   .has_value());
  EXPECT_FALSE(cgroup_cpu_quota(cgroup, kV1Mountinfo, files({})).has_value());
  EXPECT_FALSE(cgroup_cpu_quota("", "", files({})).has_value());
}

std::vector<int> cpus(int first, int count) {
  std::vector<int> ids;
  for (int i = 0; i < count; ++i) ids.push_back(first + i);
  return ids;
}

TEST(Budget, TheSmallestLimitAndWhy) {
  const CpuBudget all = make_budget(64, cpus(0, 64), std::nullopt);
  EXPECT_EQ(all.count, 64);
  EXPECT_EQ(all.reason, "all 64 CPUs of the machine");

  const CpuBudget taskset = make_budget(2, {0}, std::nullopt);
  EXPECT_EQ(taskset.count, 1);
  EXPECT_EQ(taskset.reason, "1 CPU in this process's affinity mask, of 2 in the machine");

  const CpuBudget container = make_budget(64, cpus(0, 64), CpuQuota{150000, 100000, 2});
  EXPECT_EQ(container.count, 2);
  EXPECT_EQ(container.reason, "cgroup v2 quota 150000/100000 -> 2");

  // A quota larger than the mask does not count.
  EXPECT_EQ(make_budget(64, cpus(0, 4), CpuQuota{800000, 100000, 1}).count, 4);
  // No mask from the kernel: the whole machine.
  EXPECT_EQ(make_budget(8, {}, std::nullopt).count, 8);
}

TEST(Budget, ThisProcessFollowsItsAffinityMask) {
  cpu_set_t set;
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  EXPECT_LE(usable_cpus().count, CPU_COUNT(&set));
  EXPECT_GE(usable_cpus().count, 1);
  EXPECT_EQ(static_cast<int>(usable_cpus().mask.size()), CPU_COUNT(&set));
}

TEST(Neighbours, RanksBoundToTheirOwnCoresKeepThem) {
  // 64 CPUs, 2 ranks bound to one core each (mpirun --bind-to core): one thread each, not 32.
  const std::vector<std::vector<int>> masks = {{0}, {1}};
  const CpuBudget mine = make_budget(64, masks[1], std::nullopt);
  const CpuBudget b = share_with_neighbours(mine, masks, 1);
  EXPECT_EQ(b.count, 1);
  EXPECT_NE(b.reason.find("no other"), std::string::npos) << b.reason;
  // Two sockets: ranks bound to 16 cores each.
  const std::vector<std::vector<int>> sockets = {cpus(0, 16), cpus(16, 16)};
  EXPECT_EQ(share_with_neighbours(make_budget(32, sockets[0], std::nullopt), sockets, 0).count, 16);
}

TEST(Neighbours, UnboundRanksDivideTheMachine) {
  const std::vector<std::vector<int>> masks = {cpus(0, 64), cpus(0, 64)};
  const CpuBudget b = share_with_neighbours(make_budget(64, masks[0], std::nullopt), masks, 0);
  EXPECT_EQ(b.count, 32);
  EXPECT_EQ(b.reason, "64 CPUs in this rank's affinity mask shared with 1 other rank on this machine -> 32");
  // Three ranks on two CPUs: one thread each, never zero.
  const std::vector<std::vector<int>> three = {cpus(0, 2), cpus(0, 2), cpus(0, 2)};
  EXPECT_EQ(share_with_neighbours(make_budget(2, three[2], std::nullopt), three, 2).count, 1);
  // Three ranks on three CPUs: 3 x 1/3 is one whole CPU.
  const std::vector<std::vector<int>> even = {cpus(0, 3), cpus(0, 3), cpus(0, 3)};
  EXPECT_EQ(share_with_neighbours(make_budget(3, even[0], std::nullopt), even, 0).count, 1);
}

TEST(Neighbours, PartialOverlapSharesOnlyTheCommonCpus) {
  // Rank 0 on CPUs 0-3, rank 1 on 2-3: rank 0 has 0, 1 and half of 2 and 3.
  const std::vector<std::vector<int>> masks = {cpus(0, 4), cpus(2, 2)};
  EXPECT_EQ(share_with_neighbours(make_budget(4, masks[0], std::nullopt), masks, 0).count, 3);
  EXPECT_EQ(share_with_neighbours(make_budget(4, masks[1], std::nullopt), masks, 1).count, 1);
}

TEST(Neighbours, AQuotaIsDividedAmongTheRanks) {
  const std::vector<std::vector<int>> masks = {cpus(0, 64), cpus(0, 64)};
  const CpuBudget b = share_with_neighbours(make_budget(64, masks[0], CpuQuota{400000, 100000, 2}), masks, 0);
  EXPECT_EQ(b.count, 2);
  EXPECT_NE(b.reason.find("quota 400000/100000 -> 4 divided among 2 ranks"), std::string::npos) << b.reason;
}

TEST(Threads, DefaultFollowsTheBudget) {
  set_num_threads(0);
  EXPECT_EQ(num_threads(), usable_cpus().count);
  set_num_threads(3);
  EXPECT_EQ(num_threads(), 3);
  set_num_threads(0);
}

// The threads this process runs now (its /proc/self/task entries).
int64_t threads_now() {
  return std::distance(std::filesystem::directory_iterator("/proc/self/task"), std::filesystem::directory_iterator());
}

// Waits up to 5 s for the thread count to come down to `want` (an ended thread's pool leaves as it
// is told to, not at once); returns the count seen last.
int64_t threads_after_settling(int64_t want) {
  int64_t n = threads_now();
  for (int i = 0; i < 500 && n > want; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    n = threads_now();
  }
  return n;
}

// Work that opens a parallel region of 4 threads: a thread that ran it keeps 3 OpenMP workers.
int team_size() {
  int size = 0;
#pragma omp parallel num_threads(4)
  {
#pragma omp single
    size = omp_get_num_threads();
  }
  return size;
}

// A server loads its model this way, so that the loading's OpenMP workers are gone when its engine
// computes (nn/parallel.h): here, the pool that 4-thread region opens ends with the passing thread.
TEST(Threads, APassingThreadTakesItsOpenMpPoolAlong) {
  // LLVM's runtime (clang's, in the sanitizer build) keeps one pool for the whole process, which
  // no thread takes along, and does not throttle as libgomp (GCC's, the release build) does.
  if (dlsym(RTLD_DEFAULT, "kmp_get_blocktime") != nullptr) GTEST_SKIP() << "LLVM's OpenMP runtime: one global pool";
  const int64_t before = threads_now();
  int size = 0;
  std::thread::id ran_on;
  run_on_passing_thread([&] {
    size = team_size();
    ran_on = std::this_thread::get_id();
  });
  EXPECT_EQ(size, 4);
  EXPECT_NE(ran_on, std::this_thread::get_id());
  EXPECT_EQ(threads_after_settling(before), before) << "the passing thread's OpenMP workers outlived it";
  EXPECT_THROW(run_on_passing_thread([] { fail("from the passing thread"); }), Error);
  // The passing thread computes with the caller's thread count, not OpenMP's default.
  set_num_threads(1);
  int threads = 0;
  run_on_passing_thread([&] { threads = omp_get_max_threads(); });
  EXPECT_EQ(threads, 1);
  set_num_threads(0);
}

// A request handler runs its regions alone, no team and no pool, and then gets its count back.
TEST(Threads, ASerialThreadOpensNoPool) {
  const int64_t before = threads_now();
  std::thread handler([before] {
    omp_set_num_threads(4);  // as many as there may be CPUs: the region would open a team of 4
    {
      const SerialOpenMp serial;
      int size = 0;
#pragma omp parallel
      size = omp_get_num_threads();
      EXPECT_EQ(size, 1);
      EXPECT_EQ(threads_now(), before + 1);  // itself only
    }
    EXPECT_EQ(omp_get_max_threads(), 4) << "the thread's count was not restored";
  });
  handler.join();
}

}  // namespace
}  // namespace toptag
