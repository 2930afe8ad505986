// Data-parallel training over MPI (Open MPI from Debian). Launched by mpirun or srun, toptag joins
// the job; run alone, it is one process and nothing here touches MPI.
//
// The semantics (README, "Distributed training"): --batch-size is the global batch, split evenly over
// the ranks; every rank draws the same shuffled order and computes its own slice of each global
// batch; the gradients are averaged over the ranks before every Adam step, so every rank takes the
// same step and the weights never drift apart (checked every epoch).
#pragma once

#include <cstdint>
#include <span>

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
  // Ranks on this machine (the launcher says; 1 when alone): threads per rank default to the cores
  // divided among them, never oversubscribing.
  int local_size() const;

  // In place, over every rank: the sum (or the maximum).
  void sum(std::span<float> values) const;
  void sum(std::span<double> values) const;
  double max(double value) const;
  double min(double value) const;

 private:
  World();
  int rank_ = 0, size_ = 1;
};

}  // namespace toptag
