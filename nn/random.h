// Reproducible randomness: every random number in toptag comes from an Rng seeded from one seed.
// std::mt19937_64 is fully specified by the standard; the normal and uniform transforms are ours
// (the standard library's distributions differ between implementations).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <utility>

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

// The one shuffle (Fisher-Yates): every permutation equally likely, the same for the same Rng state.
template <class T>
void shuffle(std::span<T> items, Rng& rng) {
  for (size_t i = items.size(); i > 1; --i) std::swap(items[i - 1], items[rng.below(i)]);
}

// Independent streams drawn from one seed, one per use, so adding a use never shifts another's numbers.
enum class RngStream : uint64_t { block_order = 1, row_order = 2, feature_order = 3 };
// The generator of `stream` in `epoch`: Rng(seed).fork(stream).fork(epoch).
inline Rng epoch_rng(uint64_t seed, RngStream stream, int64_t epoch) {
  return Rng(seed).fork(static_cast<uint64_t>(stream)).fork(static_cast<uint64_t>(epoch));
}

}  // namespace toptag
