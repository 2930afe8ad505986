#include "cluster/world.h"

// The C API only: Open MPI's mpi.h would otherwise pull in its removed C++ bindings.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "nn/check.h"

namespace toptag {

namespace {

// mpirun (Open MPI), srun (Slurm with PMI/PMIx) and other PMI launchers set one of these.
bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"})
    if (std::getenv(v) != nullptr) return true;
  return false;
}

void check_mpi(int code, const char* what) {
  if (code != MPI_SUCCESS) fail("MPI {} failed (error {})", what, code);
}

}  // namespace

namespace {

// Where each rank's part starts in the gathered whole (in units of `counts`); returns the total.
int64_t offsets_of(const std::vector<int>& counts, std::vector<int>& offsets) {
  offsets.resize(counts.size());
  int64_t total = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    offsets[r] = static_cast<int>(total);
    total += counts[r];
  }
  return total;
}

template <typename T>
std::vector<T> gather_rows(std::span<const T> mine, MPI_Datatype type, int ranks) {
  if (ranks == 1) return {mine.begin(), mine.end()};
  const int count = static_cast<int>(mine.size());
  std::vector<int> counts(static_cast<size_t>(ranks)), offsets;
  check_mpi(MPI_Allgather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, MPI_COMM_WORLD), "allgather");
  const int64_t total = offsets_of(counts, offsets);
  if (total > std::numeric_limits<int>::max()) fail("MPI gather of {} values: more than one call can carry", total);
  std::vector<T> all(static_cast<size_t>(total));
  check_mpi(MPI_Allgatherv(mine.data(), count, type, all.data(), counts.data(), offsets.data(), type, MPI_COMM_WORLD),
            "allgatherv");
  return all;
}

}  // namespace

struct World::Requests {
  std::vector<MPI_Request> requests;
};

World::~World() = default;

World& World::get() {
  static World world;
  return world;
}

World::World() : pending_(std::make_unique<Requests>()) {
  if (!launched_by_mpi()) return;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "init");
    std::atexit([] {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) MPI_Finalize();
    });
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
}

CpuBudget World::cpu_budget() const {
  const CpuBudget& mine = usable_cpus();
  if (size_ == 1) return mine;
  MPI_Comm node;  // the ranks on this machine
  check_mpi(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node), "comm_split_type");
  int me = 0, ranks = 1;
  MPI_Comm_rank(node, &me);
  MPI_Comm_size(node, &ranks);
  const int count = static_cast<int>(mine.mask.size());
  std::vector<int> counts(static_cast<size_t>(ranks)), offsets;
  check_mpi(MPI_Allgather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, node), "allgather");
  const int64_t total = offsets_of(counts, offsets);
  std::vector<int> all(static_cast<size_t>(total));
  check_mpi(MPI_Allgatherv(mine.mask.data(), count, MPI_INT, all.data(), counts.data(), offsets.data(), MPI_INT, node),
            "allgatherv");
  MPI_Comm_free(&node);
  std::vector<std::vector<int>> masks(static_cast<size_t>(ranks));
  for (size_t r = 0; r < masks.size(); ++r)
    masks[r].assign(all.begin() + offsets[r], all.begin() + offsets[r] + counts[r]);
  return share_with_neighbours(mine, masks, static_cast<size_t>(me));
}

void World::sum(std::span<float> values) const {
  if (size_ > 1)
    check_mpi(
        MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
        "allreduce");
}

void World::sum(std::span<double> values) const {
  if (size_ > 1)
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), MPI_DOUBLE, MPI_SUM,
                            MPI_COMM_WORLD),
              "allreduce");
}

double World::max(double value) const {
  if (size_ > 1) check_mpi(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD), "allreduce");
  return value;
}

double World::min(double value) const {
  if (size_ > 1) check_mpi(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD), "allreduce");
  return value;
}

std::vector<float> World::gather(std::span<const float> mine) const {
  return gather_rows(mine, MPI_FLOAT, size_);
}

std::vector<int64_t> World::gather(std::span<const int64_t> mine) const {
  return gather_rows(mine, MPI_INT64_T, size_);
}

std::vector<float> World::gather_to_root(std::span<const float> mine, int64_t width) const {
  if (size_ == 1) return {mine.begin(), mine.end()};
  if (width < 1 || static_cast<int64_t>(mine.size()) % width != 0)
    fail("MPI gather: {} values are not rows of {}", mine.size(), width);
  const int rows = static_cast<int>(static_cast<int64_t>(mine.size()) / width);
  MPI_Datatype row;  // counts in rows, so that more than 2^31 floats in all still fit
  check_mpi(MPI_Type_contiguous(static_cast<int>(width), MPI_FLOAT, &row), "type_contiguous");
  MPI_Type_commit(&row);
  std::vector<int> counts(static_cast<size_t>(size_)), offsets;
  check_mpi(MPI_Gather(&rows, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, MPI_COMM_WORLD), "gather");
  const int64_t total = offsets_of(counts, offsets);
  std::vector<float> all(root() ? static_cast<size_t>(total * width) : 0);
  const int code =
      MPI_Gatherv(mine.data(), rows, row, all.data(), counts.data(), offsets.data(), row, 0, MPI_COMM_WORLD);
  MPI_Type_free(&row);
  check_mpi(code, "gatherv");
  return all;
}

void World::start_sum(std::span<float> values) {
  if (size_ == 1) return;
  MPI_Request request;
  check_mpi(MPI_Iallreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), MPI_FLOAT, MPI_SUM,
                           MPI_COMM_WORLD, &request),
            "iallreduce");
  pending_->requests.push_back(request);
}

void World::progress() {
  if (pending_->requests.empty()) return;
  int done = 0;
  check_mpi(
      MPI_Testall(static_cast<int>(pending_->requests.size()), pending_->requests.data(), &done, MPI_STATUSES_IGNORE),
      "testall");
  if (done) pending_->requests.clear();
}

void World::wait_sums() {
  if (pending_->requests.empty()) return;
  check_mpi(MPI_Waitall(static_cast<int>(pending_->requests.size()), pending_->requests.data(), MPI_STATUSES_IGNORE),
            "waitall");
  pending_->requests.clear();
}

void abort_job_if_distributed(int code) {
  int initialized = 0, finalized = 0, size = 1;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size > 1) {
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
  }
}

}  // namespace toptag
