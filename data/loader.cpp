#include "data/loader.h"

#include <algorithm>
#include <numeric>

#include "nn/check.h"
#include "nn/random.h"

namespace toptag {

namespace {

int64_t bytes_per_row(const JetFile& file, const ImageOptions& images) {
  if (file.has_constituents()) return static_cast<int64_t>(file.reference()->n_constituents()) * 16 + 64;
  return images.pixels() * 4 + 16;
}

}  // namespace

std::pair<int64_t, int64_t> part_rows(int64_t n, int part, int parts, int64_t batch) {
  const int64_t batches = (n + batch - 1) / batch;
  return {std::min(n, batches * part / parts * batch), std::min(n, batches * (part + 1) / parts * batch)};
}

Loader::Loader(const JetFile& file, const ImageOptions& images, const LoaderOptions& options)
    : file_(file), images_(images), options_(options) {
  if (options.batch_size < 1) fail("batch size must be at least 1, got {}", options.batch_size);
  validate(images);
  if (options.parts < 1 || options.part < 0 || options.part >= options.parts)
    fail("loader part {} of {} does not exist", options.part, options.parts);
  end_ = options.max_jets > 0 ? std::min(options.max_jets, file.size()) : file.size();
  begin_ = std::clamp<int64_t>(options.first_row, 0, end_);
  if (end_ == begin_) fail("{}: no jets to read", file.path());
}

Loader::~Loader() {
  stop();
}

int64_t Loader::batches_per_epoch() const {
  const int64_t n = rows();
  return options_.drop_last ? n / options_.batch_size : (n + options_.batch_size - 1) / options_.batch_size;
}

NonFiniteReport Loader::dropped() const {
  std::lock_guard lock(mutex_);
  return dropped_;
}

std::vector<std::vector<int64_t>> Loader::epoch_windows(int64_t epoch) const {
  std::vector<int64_t> blocks;
  for (int64_t start = begin_; start < end_; start += kBlockRows) blocks.push_back(start);
  Rng rng = epoch_rng(options_.seed, RngStream::block_order, epoch);
  if (options_.shuffle) shuffle(std::span(blocks), rng);
  const int64_t blocks_per_window =
      std::max<int64_t>(1, options_.window_bytes / (kBlockRows * bytes_per_row(file_, images_)));
  std::vector<std::vector<int64_t>> windows;
  for (size_t i = 0; i < blocks.size(); i += static_cast<size_t>(blocks_per_window))
    windows.emplace_back(blocks.begin() + static_cast<int64_t>(i),
                         blocks.begin() + static_cast<int64_t>(std::min(blocks.size(), i + blocks_per_window)));
  return windows;
}

void Loader::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (worker_.joinable()) worker_.join();
  std::lock_guard lock(mutex_);
  stopping_ = false;
  finished_ = false;
  queue_.clear();
  error_ = nullptr;
}

void Loader::start_epoch(int64_t epoch, int64_t skip_batches) {
  stop();
  worker_ = std::thread([this, epoch, skip_batches] {
    try {
      produce(epoch, skip_batches);
    } catch (...) {
      std::lock_guard lock(mutex_);
      error_ = std::current_exception();
    }
    {
      std::lock_guard lock(mutex_);
      finished_ = true;
    }
    changed_.notify_all();
  });
}

bool Loader::push(std::optional<Batch> batch) {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return stopping_ || static_cast<int>(queue_.size()) < options_.prefetch; });
  if (stopping_) return false;
  queue_.push_back(std::move(batch));
  changed_.notify_all();
  return true;
}

void Loader::produce(int64_t epoch, int64_t skip_batches) {
  Rng rng = epoch_rng(options_.seed, RngStream::row_order, epoch);
  const int64_t B = options_.batch_size;
  int64_t emitted = 0;
  // Examples not yet batched, carried from one window to the next.
  Examples carry;
  std::vector<int64_t> carry_order;
  auto emit = [&](const Examples& ex, std::span<const int64_t> order) -> bool {
    const bool skipping = emitted < skip_batches;
    Batch batch;
    batch.whole_rows = static_cast<int64_t>(order.size());
    if (options_.parts > 1) {  // this rank's slice of the batch every rank draws
      const auto [first, end] = part_rows(static_cast<int64_t>(order.size()), options_.part, options_.parts);
      order = order.subspan(static_cast<size_t>(first), static_cast<size_t>(end - first));
    }
    if (!skipping) {
      batch.images = file_.images(ex, order, images_);
      for (int64_t i : order) batch.labels.push_back(ex.labels[i]), batch.rows.push_back(ex.rows[i]);
    }
    ++emitted;
    return skipping || push(std::move(batch));
  };

  for (const std::vector<int64_t>& window : epoch_windows(epoch)) {
    NonFiniteReport dropped;
    // Read the window's blocks and append them to what the previous window left over.
    Examples ex = std::move(carry);
    std::vector<int64_t> order = std::move(carry_order);
    for (int64_t start : window) {
      Examples part = file_.read(start, std::min(kBlockRows, end_ - start), dropped);
      const int64_t base = ex.size();
      if (file_.has_constituents()) {
        ex.jets.n_constituents = part.jets.n_constituents;
        ex.jets.constituents.insert(ex.jets.constituents.end(), part.jets.constituents.begin(),
                                    part.jets.constituents.end());
      } else {
        Tensor merged = Tensor::empty({base + part.size(), images_.channels, images_.size, images_.size});
        if (base > 0) std::copy_n(ex.images.data(), ex.images.numel(), merged.data());
        std::copy_n(part.images.data(), part.images.numel(), merged.data() + base * images_.pixels());
        ex.images = merged;
      }
      ex.labels.insert(ex.labels.end(), part.labels.begin(), part.labels.end());
      ex.rows.insert(ex.rows.end(), part.rows.begin(), part.rows.end());
      std::vector<int64_t> fresh(static_cast<size_t>(part.size()));
      std::iota(fresh.begin(), fresh.end(), base);
      if (options_.shuffle) shuffle(std::span(fresh), rng);
      order.insert(order.end(), fresh.begin(), fresh.end());
    }
    if (dropped.count > 0) {
      std::lock_guard lock(mutex_);
      if (dropped_.count == 0) dropped_.first_row = dropped.first_row;
      dropped_.count += dropped.count;
    }
    if (options_.shuffle) shuffle(std::span(order), rng);
    size_t pos = 0;
    for (; pos + static_cast<size_t>(B) <= order.size(); pos += static_cast<size_t>(B))
      if (!emit(ex, std::span<const int64_t>(order).subspan(pos, static_cast<size_t>(B)))) return;
    // Keep the remainder (fewer than B examples) for the next window.
    carry = Examples{};
    carry_order.clear();
    if (pos < order.size()) {
      std::vector<int64_t> rest(order.begin() + static_cast<int64_t>(pos), order.end());
      carry.jets.n_constituents = ex.jets.n_constituents;
      const int64_t per_jet = static_cast<int64_t>(ex.jets.n_constituents) * 4;
      if (!file_.has_constituents()) carry.images = file_.images(ex, rest, images_);
      for (size_t i = 0; i < rest.size(); ++i) {
        if (file_.has_constituents())
          carry.jets.constituents.insert(carry.jets.constituents.end(),
                                         ex.jets.constituents.begin() + rest[i] * per_jet,
                                         ex.jets.constituents.begin() + (rest[i] + 1) * per_jet);
        carry.labels.push_back(ex.labels[rest[i]]);
        carry.rows.push_back(ex.rows[rest[i]]);
        carry_order.push_back(static_cast<int64_t>(i));
      }
    }
  }
  if (!carry_order.empty() && !options_.drop_last && !emit(carry, carry_order)) return;
  push(std::nullopt);
}

std::optional<Batch> Loader::next() {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return !queue_.empty() || error_ != nullptr || finished_ || !worker_.joinable(); });
  if (error_) std::rethrow_exception(error_);
  if (queue_.empty()) return std::nullopt;
  std::optional<Batch> batch = std::move(queue_.front());
  queue_.pop_front();
  changed_.notify_all();
  return batch;
}

}  // namespace toptag
