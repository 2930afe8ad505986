#include "training/distributed.h"

// The C API only: Open MPI's mpi.h would otherwise pull in its removed C++ bindings.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <cstdlib>

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

World& World::get() {
  static World world;
  return world;
}

World::World() {
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

int World::local_size() const {
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"})
    if (const char* text = std::getenv(v); text != nullptr && std::atoi(text) > 0) return std::atoi(text);
  return size_;
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

}  // namespace toptag
