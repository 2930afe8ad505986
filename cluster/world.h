// The MPI job this process belongs to (Open MPI from Debian). Launched by mpirun or srun, toptag
// joins the job; run alone, it is one process and nothing here touches MPI.
// Below training, serve and apps, which all ask it who they are; above nn, which stays free of MPI
// (its thread count is this process's alone; cpu_budget() here divides it among the ranks).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "nn/parallel.h"

namespace toptag {

class World {
 public:
  // The job this process belongs to: MPI is initialised on first use when a launcher started us
  // (Open MPI's or Slurm's environment variables say so), and finalised at exit.
  static World& get();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool distributed() const { return size_ > 1; }
  bool root() const { return rank_ == 0; }
  // The CPUs this rank may use: usable_cpus(), shared with the ranks on this machine whose affinity
  // masks overlap this one's (nn/parallel.h share_with_neighbours). Collective: every rank calls it.
  CpuBudget cpu_budget() const;

  // In place, over every rank: the sum (or the maximum).
  void sum(std::span<float> values) const;
  void sum(std::span<double> values) const;
  double max(double value) const;
  double min(double value) const;
  // Rows gathered from every rank, rank 0's first: each rank passes its own, all get the whole.
  std::vector<float> gather(std::span<const float> mine) const;
  std::vector<int64_t> gather(std::span<const int64_t> mine) const;
  // Rows of `width` floats from every rank, concatenated in rank order on rank 0 alone (the others
  // get nothing): large outputs such as featurizer outputs, which only rank 0 writes.
  std::vector<float> gather_to_root(std::span<const float> mine, int64_t width) const;

  // A sum over every rank started now (MPI_Iallreduce) and completed by wait_sums(); `values` must
  // stay alive and untouched until then. Every rank starts the same sums in the same order.
  void start_sum(std::span<float> values);
  // Lets the started sums advance (MPI progresses them only inside its calls).
  void progress();
  void wait_sums();

  ~World();

 private:
  World();
  int rank_ = 0, size_ = 1;
  struct Requests;
  std::unique_ptr<Requests> pending_;
};

// After an error on this rank, ends the whole job with `code` (MPI_Abort) when it has other ranks:
// they would otherwise wait for this one forever in their next collective (and MPI_Finalize, run at
// exit, can wait for them). Does nothing in a process MPI did not start.
void abort_job_if_distributed(int code);

}  // namespace toptag
