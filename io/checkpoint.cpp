#include "io/checkpoint.h"

#include <algorithm>
#include <tuple>
#include <vector>

#include "nn/check.h"

namespace toptag {

void write_model_state(hid_t file, ResNet& model) {
  StateList state = model.state();
  for (const auto& p : state.parameters) h5_write_tensor(file, p.name, p.var->value());
  for (const auto& b : state.buffers) h5_write_tensor(file, b.name, *b.tensor);
  h5_set_attr(file, "arch", model.config().arch);
  h5_set_attr(file, "toptag_format", kCheckpointFormat);
  h5_set_attr(file, "folded_batchnorm", static_cast<int64_t>(model.folded() ? 1 : 0));
}

void save_model(const std::string& path, ResNet& model) {
  AtomicH5File out(path);
  write_model_state(out.id(), model);
  out.commit();
}

ResNetConfig read_model_config(hid_t file, const std::string& path) {
  if (auto format = h5_attr_int(file, "toptag_format"); format && *format > kCheckpointFormat)
    fail("{}: checkpoint format {} is newer than this toptag understands ({}); upgrade toptag", path, *format,
         kCheckpointFormat);
  std::optional<std::string> arch = h5_attr_string(file, "arch");
  if (!arch) fail("{}: not a model checkpoint (root attribute 'arch' is missing)", path);
  if (!find_arch(*arch)) fail("{}: unknown architecture '{}' (known: {})", path, *arch, fmt::join(known_archs(), ", "));
  auto shape_of = [&](const char* name, size_t rank) {
    std::vector<int64_t> s = h5_dataset_shape(file, name, path);
    if (s.size() != rank) fail("{}: tensor '{}' has rank {}, expected {}", path, name, s.size(), rank);
    return s;
  };
  ResNetConfig config;
  config.arch = *arch;
  const std::vector<int64_t> stem = shape_of("conv1.weight", 4);
  config.width = stem[0];
  config.in_channels = stem[1];
  config.hidden = shape_of("fc1.weight", 2)[0];
  config.classes = shape_of("fc2.weight", 2)[0];
  // Bounded before the model is built from them: a forged shape must not allocate terabytes.
  for (const auto& [what, value, max] : {std::tuple{"width (conv1.weight rows)", config.width, int64_t{1024}},
                                         {"input channels (conv1.weight columns)", config.in_channels, int64_t{4}},
                                         {"hidden units (fc1.weight rows)", config.hidden, int64_t{1} << 16},
                                         {"classes (fc2.weight rows)", config.classes, int64_t{2}}})
    if (value < 1 || value > max) fail("{}: the model's {} is {}, outside [1, {}]", path, what, value, max);
  // The stem's width fixes the featurizer's output width, which fc1 reads: a forged conv1.weight that
  // disagrees is refused here, before a model of its width (up to billions of weights) is built.
  const ArchSpec spec = *find_arch(*arch);
  const int64_t features = (config.width << (spec.layers.size() - 1)) * (spec.block == BlockKind::bottleneck ? 4 : 1);
  if (const int64_t fc1_columns = shape_of("fc1.weight", 2)[1]; fc1_columns != features)
    fail("{}: fc1.weight reads {} features, but a {} of stem width {} makes {}", path, fc1_columns, *arch, config.width,
         features);
  return config;
}

void read_model_state(hid_t file, const std::string& path, ResNet& model) {
  StateList state = model.state();
  // Read everything first so that a bad file leaves the model untouched.
  std::vector<std::pair<Tensor*, Tensor>> loaded;
  auto load = [&](const std::string& name, Tensor* target) {
    if (!h5_exists(file, name))
      fail("{}: tensor '{}' is missing (expected shape {})", path, name, target->shape().str());
    Tensor t = h5_read_tensor(file, name, path);
    if (!(t.shape() == target->shape()))
      fail("{}: tensor '{}' has shape {}, expected {}", path, name, t.shape().str(), target->shape().str());
    if (!all_finite(std::span<const float>(t.data(), static_cast<size_t>(t.numel()))))
      fail("{}: tensor '{}' holds NaN or inf (a diverged run?)", path, name);
    if (name.ends_with("running_var") && std::any_of(t.data(), t.data() + t.numel(), [](float v) { return v < 0; }))
      fail("{}: tensor '{}' holds a negative variance", path, name);
    loaded.emplace_back(target, std::move(t));
  };
  for (const auto& p : state.parameters) load(p.name, &p.var->value());
  for (const auto& b : state.buffers) load(b.name, b.tensor);
  for (auto& [target, value] : loaded) target->copy_from(value);
}

std::unique_ptr<ResNet> load_model(hid_t file, const std::string& path) {
  auto model = std::make_unique<ResNet>(read_model_config(file, path), 0);
  if (h5_attr_int(file, "folded_batchnorm").value_or(0) != 0) model->fold_batchnorm();
  read_model_state(file, path, *model);
  return model;
}

std::unique_ptr<ResNet> load_model(const std::string& path) {
  H5Id file = h5_open(path);
  return load_model(file.get(), path);
}

}  // namespace toptag
