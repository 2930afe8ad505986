#include "training/checkpoint.h"

#include <filesystem>

#include "io/checkpoint.h"
#include "nn/check.h"

namespace toptag {

namespace fs = std::filesystem;

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
  h5_set_attr(t.get(), "config", config.to_json());
  out.commit();
}

namespace {

H5Id training_group(hid_t file, const std::string& path) {
  if (!h5_exists(file, "training")) fail("{}: not a training checkpoint (no /training group)", path);
  return h5_group(file, "training", false);
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
