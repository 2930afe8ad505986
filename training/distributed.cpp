#include "training/distributed.h"

#include <algorithm>
#include <chrono>

namespace toptag {

InferenceResult gather(const InferenceResult& mine, const World& world) {
  if (!world.distributed()) return mine;
  InferenceResult all;
  all.predictions.score = world.gather(std::span<const float>(mine.predictions.score));
  all.predictions.label = world.gather(std::span<const int64_t>(mine.predictions.label));
  double loss[1] = {mine.mean_loss * static_cast<double>(mine.predictions.size())};
  world.sum(loss);
  all.mean_loss = loss[0] / static_cast<double>(std::max<int64_t>(1, all.predictions.size()));
  all.dropped = gather(mine.dropped, world);
  return all;
}

NonFiniteReport gather(const NonFiniteReport& mine, const World& world) {
  if (!world.distributed()) return mine;
  double count[1] = {static_cast<double>(mine.count)};
  world.sum(count);
  const double first = world.min(mine.count > 0 ? static_cast<double>(mine.first_row) : 1e300);
  return {static_cast<int64_t>(count[0]), count[0] > 0 ? static_cast<int64_t>(first) : -1};
}

GradientReducer::GradientReducer(const StateList& trainable, World& world, int64_t bucket_bytes)
    : trainable_(trainable), world_(world) {
  const int64_t bucket_values = std::max<int64_t>(1, bucket_bytes / static_cast<int64_t>(sizeof(float)));
  for (size_t i = trainable.parameters.size(); i-- > 0;) {
    const int64_t n = trainable.parameters[i].var->value().numel();
    if (buckets_.empty() || static_cast<int64_t>(buckets_.back().values.size()) + n > bucket_values)
      buckets_.emplace_back();
    Bucket& b = buckets_.back();
    b.parameters.push_back(i);
    b.values.resize(b.values.size() + static_cast<size_t>(n));
    bucket_of_.emplace_back(trainable.parameters[i].var->slot().get(), buckets_.size() - 1);
  }
  std::sort(bucket_of_.begin(), bucket_of_.end());
}

void GradientReducer::start(int64_t local_rows) {
  local_rows_ = static_cast<float>(local_rows);
  launched_ = 0;
  for (Bucket& b : buckets_) b.waiting = b.parameters.size();
}

void GradientReducer::ready(const GradSlot& slot) {
  auto it = std::lower_bound(bucket_of_.begin(), bucket_of_.end(), std::pair{&slot, size_t{0}});
  if (it == bucket_of_.end() || it->first != &slot) return;  // not trained (a frozen backbone)
  const auto start = std::chrono::steady_clock::now();
  Bucket& b = buckets_[it->second];
  if (b.waiting > 0) --b.waiting;
  launch_ready_buckets();
  world_.progress();
  hook_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void GradientReducer::launch_ready_buckets() {
  while (launched_ < buckets_.size() && buckets_[launched_].waiting == 0) {
    Bucket& b = buckets_[launched_++];
    float* out = b.values.data();
    for (size_t i : b.parameters) {
      const Tensor& g = trainable_.parameters[i].var->grad();
      for (int64_t k = 0; k < g.numel(); ++k) *out++ = g.data()[k] * local_rows_;
    }
    world_.start_sum(b.values);
  }
}

double GradientReducer::finish(int64_t global_rows) {
  const auto start = std::chrono::steady_clock::now();
  for (Bucket& b : buckets_) b.waiting = 0;
  launch_ready_buckets();
  world_.wait_sums();
  const float scale = 1.0f / static_cast<float>(global_rows);
  for (const Bucket& b : buckets_) {
    const float* in = b.values.data();
    for (size_t i : b.parameters) {
      Tensor& g = trainable_.parameters[i].var->mutable_grad();
      for (int64_t k = 0; k < g.numel(); ++k) g.data()[k] = *in++ * scale;
    }
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace toptag
