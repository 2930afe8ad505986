#include "triton/model_config.h"

#include <limits>

#include "model_config.pb.h"
#include "nn/check.h"

namespace toptag {

namespace {

// The dimensions after the batch; the first must be the variable batch dimension.
std::vector<int64_t> per_item_dims(const TritonTensor& t) {
  if (t.dims.empty() || t.dims[0] != -1)
    fail("tensor '{}' has no leading dynamic batch dimension, which Triton's max_batch_size needs", t.name);
  for (size_t i = 1; i < t.dims.size(); ++i)
    if (t.dims[i] < 1) fail("tensor '{}' has a variable dimension {} besides the batch", t.name, i);
  return {t.dims.begin() + 1, t.dims.end()};
}

}  // namespace

void check_triton_model_name(const std::string& name) {
  const bool plain =
      !name.empty() && name != "." && name != ".." &&
      name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.") == std::string::npos;
  if (!plain)
    fail(
        "model name '{}' must be letters, digits, '_', '-' or '.' (in Triton it names a directory of the model "
        "repository)",
        name);
}

inference::ModelConfig triton_model_config(const TritonModel& m) {
  check_triton_model_name(m.name);
  if (m.max_batch < 1 || m.max_batch > std::numeric_limits<int32_t>::max())
    fail("max batch {} is not a positive 32-bit count", m.max_batch);
  if (m.max_queue_delay_us < 0) fail("max queue delay {} us is negative", m.max_queue_delay_us);
  if (m.instances < 0) fail("{} model instances", m.instances);
  inference::ModelConfig c;
  c.set_name(m.name);
  c.set_platform(m.platform);
  c.set_backend(m.backend);
  c.set_max_batch_size(static_cast<int32_t>(m.max_batch));
  for (const TritonTensor& t : m.inputs) {
    inference::ModelInput* in = c.add_input();
    in->set_name(t.name);
    in->set_data_type(inference::TYPE_FP32);
    for (int64_t d : per_item_dims(t)) in->add_dims(d);
    in->set_optional(t.optional);
  }
  for (const TritonTensor& t : m.outputs) {
    if (t.optional) fail("output '{}' is marked optional; only inputs can be", t.name);
    inference::ModelOutput* out = c.add_output();
    out->set_name(t.name);
    out->set_data_type(inference::TYPE_FP32);
    for (int64_t d : per_item_dims(t)) out->add_dims(d);
  }
  if (m.instances > 0) {
    inference::ModelInstanceGroup* group = c.add_instance_group();
    group->set_count(m.instances);
    group->set_kind(inference::ModelInstanceGroup::KIND_CPU);
  }
  c.mutable_dynamic_batching()->set_max_queue_delay_microseconds(static_cast<uint64_t>(m.max_queue_delay_us));
  return c;
}

}  // namespace toptag
