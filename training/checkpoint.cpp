#include "training/checkpoint.h"

#include <cmath>
#include <filesystem>

#include "io/checkpoint.h"
#include "nn/check.h"

namespace toptag {

namespace fs = std::filesystem;

void TrainState::next_epoch() {
  ++epoch;
  step_in_epoch = 0;
  epoch_loss_sum = 0;
  epoch_loss_steps = 0;
  epoch_seconds = 0;
}

void write_training_checkpoint(const std::string& path, const Tagger& tagger, const Adam& adam, const TrainState& s,
                               const TrainConfig& config) {
  AtomicH5File out(path);
  write_model_state(out.id(), *tagger.model);
  if (tagger.quantization) write_quantization(out.id(), *tagger.model, *tagger.quantization);
  H5Id opt = h5_group(out.id(), "optimizer", true);
  adam.save(opt.get());
  H5Id t = h5_group(out.id(), "training", true);
  h5_set_attr(t.get(), "epoch", s.epoch);
  h5_set_attr(t.get(), "step_in_epoch", s.step_in_epoch);
  h5_set_attr(t.get(), "global_step", s.global_step);
  h5_set_attr(t.get(), "best_auc", s.best_auc);
  h5_set_attr(t.get(), "best_epoch", s.best_epoch);
  h5_set_attr(t.get(), "epoch_loss_sum", s.epoch_loss_sum);
  h5_set_attr(t.get(), "epoch_loss_steps", s.epoch_loss_steps);
  h5_set_attr(t.get(), "epoch_seconds", s.epoch_seconds);
  h5_set_attr(t.get(), "config", config.to_json());
  out.commit();
}

namespace {

H5Id training_group(hid_t file, const std::string& path) {
  if (!h5_exists(file, "training")) fail("{}: not a training checkpoint (no /training group)", path);
  return h5_group(file, "training", false);
}

// The running sums of the epoch in progress: all three, or none (a checkpoint written before them:
// the sums stay 0, and the resumed epoch's train metrics cover only its resumed steps).
void read_epoch_sums(hid_t t, const std::string& path, TrainState& s) {
  const std::optional<double> loss = h5_attr_double(t, "epoch_loss_sum");
  const std::optional<int64_t> steps = h5_attr_int(t, "epoch_loss_steps");
  const std::optional<double> seconds = h5_attr_double(t, "epoch_seconds");
  if (!loss && !steps && !seconds) return;
  if (!loss || !steps || !seconds)
    fail("{}: /training holds only some of epoch_loss_sum, epoch_loss_steps and epoch_seconds (damaged)", path);
  // A diverged epoch's loss sum is NaN or inf; a negative one is no sum of cross-entropies.
  if (*loss < 0) fail("{}: /training attribute epoch_loss_sum is {}, below 0 (damaged)", path, *loss);
  if (*steps < 0 || *steps > s.step_in_epoch)
    fail("{}: /training attribute epoch_loss_steps is {}, outside 0..{} (step_in_epoch; damaged)", path, *steps,
         s.step_in_epoch);
  if (!std::isfinite(*seconds) || *seconds < 0)
    fail("{}: /training attribute epoch_seconds is {}, not a time in seconds (damaged)", path, *seconds);
  s.epoch_loss_sum = *loss;
  s.epoch_loss_steps = *steps;
  s.epoch_seconds = *seconds;
}

}  // namespace

TrainState read_train_state(const std::string& path) {
  H5Id file = h5_open(path);
  H5Id t = training_group(file.get(), path);
  auto get = [&](const char* name) {
    std::optional<int64_t> v = h5_attr_int(t.get(), name);
    if (!v) fail("{}: /training has no integer attribute '{}'", path, name);
    return *v;
  };
  TrainState s;
  s.epoch = get("epoch"), s.step_in_epoch = get("step_in_epoch"), s.global_step = get("global_step");
  s.best_epoch = get("best_epoch");
  s.best_auc = h5_attr_double(t.get(), "best_auc").value_or(-1);
  if (s.epoch < 0 || s.step_in_epoch < 0 || s.global_step < 0)
    fail("{}: /training holds a negative epoch or step count", path);
  read_epoch_sums(t.get(), path, s);
  return s;
}

TrainConfig read_train_config(const std::string& path) {
  H5Id file = h5_open(path);
  H5Id t = training_group(file.get(), path);
  std::optional<std::string> text = h5_attr_string(t.get(), "config");
  if (!text) fail("{}: /training has no 'config' attribute", path);
  return TrainConfig::from_json(*text, path);
}

void read_optimizer(const std::string& path, Adam& adam) {
  H5Id file = h5_open(path);
  if (!h5_exists(file.get(), "optimizer")) fail("{}: not a training checkpoint (no /optimizer group)", path);
  H5Id g = h5_group(file.get(), "optimizer", false);
  adam.load(g.get(), path);
}

std::string resume_checkpoint_path(const std::string& p) {
  if (fs::is_directory(p)) return (fs::path(p) / "last.h5").string();
  return p;
}

}  // namespace toptag
