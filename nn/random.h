// Reproducible randomness: every random number in toptag comes from an Rng seeded from one seed.
// std::mt19937_64 is fully specified by the standard; the normal and uniform transforms are ours
// (the standard library's distributions differ between implementations).
#pragma once

#include <cstdint>
#include <random>

namespace toptag {

class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}

  uint64_t next_u64() { return engine_(); }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  // Standard normal (Box-Muller, both values used).
  double normal();
  // Uniform integer in [0, n).
  uint64_t below(uint64_t n) { return n == 0 ? 0 : next_u64() % n; }
  // A derived, independent stream (for per-layer or per-worker generators).
  Rng fork(uint64_t stream);

 private:
  std::mt19937_64 engine_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

}  // namespace toptag
