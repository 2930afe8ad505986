#include "nn/tensor.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "nn/check.h"
#include "nn/profile.h"

namespace toptag {

void assert_failed(const char* condition, const char* file, int line) {
  throw std::logic_error(fmt::format("internal error: {} failed at {}:{}", condition, file, line));
}

// ---------------------------------------------------------------------------------------------
// Shape

Shape::Shape(std::initializer_list<int64_t> dims) : Shape(std::span<const int64_t>(dims.begin(), dims.size())) {}

Shape::Shape(std::span<const int64_t> dims) {
  if (dims.size() > static_cast<size_t>(kMaxRank)) fail("tensor rank {} exceeds the maximum {}", dims.size(), kMaxRank);
  rank_ = static_cast<int>(dims.size());
  for (int i = 0; i < rank_; ++i) {
    if (dims[i] < 0) fail("negative dimension {} in a tensor shape", dims[i]);
    dims_[i] = dims[i];
  }
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < rank_; ++i) n *= dims_[i];
  return n;
}

bool Shape::operator==(const Shape& other) const {
  return rank_ == other.rank_ && std::equal(dims_.begin(), dims_.begin() + rank_, other.dims_.begin());
}

std::string Shape::str() const {
  return fmt::format("[{}]", fmt::join(dims(), ", "));
}

// ---------------------------------------------------------------------------------------------
// Buffer pool: free lists keyed by the rounded byte size.

namespace {

constexpr size_t kAlignment = 64;                      // one cache line, enough for AVX-512 loads
constexpr int64_t kMaxCachedBytes = int64_t{1} << 30;  // beyond 1 GiB of idle buffers, free them

size_t rounded_bytes(int64_t numel) {
  size_t bytes = static_cast<size_t>(std::max<int64_t>(numel, 1)) * sizeof(float);
  return (bytes + kAlignment - 1) / kAlignment * kAlignment;
}

class BufferPool {
 public:
  float* acquire(size_t bytes) {
    {
      std::lock_guard lock(mutex_);
      stats_.live_bytes += static_cast<int64_t>(bytes);
      stats_.peak_live_bytes = std::max(stats_.peak_live_bytes, stats_.live_bytes);
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        float* p = it->second.back();
        it->second.pop_back();
        stats_.cached_bytes -= static_cast<int64_t>(bytes);
        ++stats_.reuses;
        return p;
      }
      ++stats_.allocations;
    }
    void* p = std::aligned_alloc(kAlignment, bytes);
    if (p == nullptr) fail("out of memory allocating a tensor of {} bytes", bytes);
    return static_cast<float*>(p);
  }

  void release(float* p, size_t bytes) {
    {
      std::lock_guard lock(mutex_);
      stats_.live_bytes -= static_cast<int64_t>(bytes);
      if (stats_.cached_bytes + static_cast<int64_t>(bytes) <= kMaxCachedBytes) {
        free_[bytes].push_back(p);
        stats_.cached_bytes += static_cast<int64_t>(bytes);
        return;
      }
    }
    std::free(p);
  }

  void release_cached() {
    std::lock_guard lock(mutex_);
    for (auto& [bytes, list] : free_)
      for (float* p : list) std::free(p);
    free_.clear();
    stats_.cached_bytes = 0;
  }

  PoolStats stats() {
    std::lock_guard lock(mutex_);
    return stats_;
  }

 private:
  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<float*>> free_;
  PoolStats stats_;
};

BufferPool& pool() {
  static BufferPool* instance = new BufferPool();  // never destroyed: tensors may outlive main()
  return *instance;
}

std::shared_ptr<float> pooled_buffer(int64_t numel) {
  size_t bytes = rounded_bytes(numel);
  return std::shared_ptr<float>(pool().acquire(bytes), [bytes](float* p) { pool().release(p, bytes); });
}

}  // namespace

PoolStats pool_stats() {
  return pool().stats();
}
void pool_release_cached() {
  pool().release_cached();
}

// ---------------------------------------------------------------------------------------------
// Tensor

Tensor Tensor::empty(const Shape& shape) {
  Tensor t;
  t.shape_ = shape;
  t.storage_ = pooled_buffer(shape.numel());
  return t;
}

Tensor Tensor::zeros(const Shape& shape) {
  return full(shape, 0.0f);
}

Tensor Tensor::full(const Shape& shape, float value) {
  Tensor t = empty(shape);
  t.fill(value);
  return t;
}

Tensor Tensor::from(const Shape& shape, std::span<const float> values) {
  if (static_cast<int64_t>(values.size()) != shape.numel())
    fail("cannot make a tensor of shape {} from {} values", shape.str(), values.size());
  Tensor t = empty(shape);
  std::copy(values.begin(), values.end(), t.data());
  return t;
}

Tensor Tensor::reshape(const Shape& shape) const {
  if (shape.numel() != numel()) fail("cannot reshape a tensor of shape {} to {}", shape_.str(), shape.str());
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::clone() const {
  if (!defined()) return {};
  Tensor t = empty(shape_);
  std::memcpy(t.data(), data(), static_cast<size_t>(numel()) * sizeof(float));
  return t;
}

void Tensor::fill(float value) {
  ProfileScope profile("fill");
  std::fill_n(data(), numel(), value);
}

void Tensor::copy_from(const Tensor& other) {
  if (!(other.shape() == shape_))
    fail("cannot copy a tensor of shape {} into one of shape {}", other.shape().str(), shape_.str());
  std::memcpy(data(), other.data(), static_cast<size_t>(numel()) * sizeof(float));
}

bool all_finite(std::span<const float> values) {
  return std::all_of(values.begin(), values.end(), [](float v) { return std::isfinite(v); });
}

Tensor concat_rows(std::span<const Tensor> parts) {
  if (parts.empty()) fail("concat_rows: no parts");
  if (parts.size() == 1) return parts[0];
  auto rest = [](const Tensor& t) {  // every dimension but the first
    Shape s = t.shape();
    if (s.rank() == 0) fail("concat_rows: a scalar has no rows");
    s[0] = 0;
    return s;
  };
  Shape shape = rest(parts[0]);
  for (const Tensor& p : parts) {
    if (!(rest(p) == rest(parts[0])))
      fail("concat_rows: parts of shapes {} and {}", parts[0].shape().str(), p.shape().str());
    shape[0] += p.dim(0);
  }
  Tensor all = Tensor::empty(shape);
  float* out = all.data();
  for (const Tensor& p : parts) {
    if (p.numel() > 0) std::memcpy(out, p.data(), static_cast<size_t>(p.numel()) * sizeof(float));
    out += p.numel();
  }
  return all;
}

void expect_shape(const Tensor& t, const Shape& expected, const std::string& what) {
  if (!t.defined()) fail("{}: tensor is missing (expected shape {})", what, expected.str());
  if (!(t.shape() == expected)) fail("{}: expected shape {}, found {}", what, expected.str(), t.shape().str());
}

}  // namespace toptag
