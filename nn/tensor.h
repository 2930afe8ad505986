// float32 tensors: a shape and a contiguous row-major (NCHW for images) buffer.
// Buffers come from a process-wide pool keyed by size, so a training step that repeats the
// same shapes reuses the same memory instead of calling malloc for every op.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>

namespace toptag {

// A shape of rank 0..kMaxRank, stored inline (no heap allocation per tensor).
class Shape {
 public:
  static constexpr int kMaxRank = 6;

  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  explicit Shape(std::span<const int64_t> dims);

  int rank() const { return rank_; }
  int64_t operator[](int i) const { return dims_[i]; }
  int64_t& operator[](int i) { return dims_[i]; }
  int64_t numel() const;
  std::span<const int64_t> dims() const { return {dims_.data(), static_cast<size_t>(rank_)}; }
  bool operator==(const Shape& other) const;
  std::string str() const;  // "[64, 1, 40, 40]"

 private:
  std::array<int64_t, kMaxRank> dims_{};
  int rank_ = 0;
};

class Tensor {
 public:
  Tensor() = default;

  // Uninitialised contents (from the pool).
  static Tensor empty(const Shape& shape);
  static Tensor zeros(const Shape& shape);
  static Tensor full(const Shape& shape, float value);
  static Tensor from(const Shape& shape, std::span<const float> values);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int rank() const { return shape_.rank(); }
  int64_t dim(int i) const { return shape_[i]; }
  int64_t numel() const { return shape_.numel(); }

  float* data() { return storage_.get(); }
  const float* data() const { return storage_.get(); }
  std::span<float> span() { return {data(), static_cast<size_t>(numel())}; }
  std::span<const float> span() const { return {data(), static_cast<size_t>(numel())}; }

  // Same storage, new shape with the same number of elements.
  Tensor reshape(const Shape& shape) const;
  Tensor clone() const;
  void fill(float value);
  void copy_from(const Tensor& other);  // shapes must match
  bool shares_storage_with(const Tensor& other) const { return storage_ == other.storage_; }
  // No other Tensor holds this buffer (a fresh result that may be handed over without a copy).
  bool sole_owner() const { return storage_ != nullptr && storage_.use_count() == 1; }

 private:
  Shape shape_;
  std::shared_ptr<float> storage_;
};

// Throws toptag::Error naming `what` unless `t` has exactly `expected` shape.
void expect_shape(const Tensor& t, const Shape& expected, const std::string& what);

// True when no value is NaN or inf.
bool all_finite(std::span<const float> values);

// The parts' rows (first dimension) one after the other, as one tensor; the parts must agree in
// every other dimension. One part is returned as it is, not copied.
Tensor concat_rows(std::span<const Tensor> parts);

// The buffer pool behind Tensor::empty. Thread-safe. Freed buffers are kept for reuse until the
// cached total exceeds a cap, past which they go back to the system.
struct PoolStats {
  int64_t allocations = 0;      // buffers that had to come from the system
  int64_t reuses = 0;           // buffers served from the cache
  int64_t cached_bytes = 0;     // currently held for reuse
  int64_t live_bytes = 0;       // currently handed out to tensors
  int64_t peak_live_bytes = 0;  // high-water mark of live_bytes
};
PoolStats pool_stats();
void pool_release_cached();  // return every cached buffer to the system

}  // namespace toptag
