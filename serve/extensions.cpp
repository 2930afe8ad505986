#include "serve/extensions.h"

#include "triton/model_config.h"

namespace toptag {

using json = nlohmann::json;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

inference::ModelConfig model_config(const InferenceService& service, const std::string& name,
                                    const std::string& version) {
  service.check_model(name, version);
  return triton_model_config(service.triton_model());
}

namespace {

void fill(inference::StatisticDuration* out, uint64_t count, uint64_t ns) {
  out->set_count(count);
  out->set_ns(ns);
}

void fill(inference::StatisticDuration* out, const DurationStatistic& d) {
  fill(out, d.count, d.ns);
}

}  // namespace

inference::ModelStatisticsResponse model_statistics(const InferenceService& service, const std::string& name,
                                                    const std::string& version) {
  service.check_model(name.empty() ? service.model_name() : name, version);
  const RequestStatistics r = service.statistics();
  const std::map<int64_t, BatchStatistics> batches = service.engine().batch_statistics();
  inference::ModelStatisticsResponse response;
  inference::ModelStatistics* m = response.add_model_stats();
  m->set_name(service.model_name());
  m->set_version(kModelVersion);
  m->set_last_inference(r.last_inference_ms);
  m->set_inference_count(r.inference_count);
  inference::InferStatistics* s = m->mutable_inference_stats();
  fill(s->mutable_success(), r.success);
  fill(s->mutable_fail(), r.fail);
  fill(s->mutable_queue(), r.queue);
  fill(s->mutable_compute_input(), r.compute_input);
  fill(s->mutable_compute_infer(), r.compute_infer);
  fill(s->mutable_compute_output(), r.compute_output);
  s->mutable_cache_hit();  // present and zero, as Triton without a response cache writes them
  s->mutable_cache_miss();
  uint64_t executions = 0;
  for (const auto& [size, b] : batches) {
    inference::InferBatchStatistics* out = m->add_batch_stats();
    out->set_batch_size(static_cast<uint64_t>(size));
    fill(out->mutable_compute_input(), b.executions, b.compute_input_ns);
    fill(out->mutable_compute_infer(), b.executions, b.compute_infer_ns);
    fill(out->mutable_compute_output(), b.executions, b.compute_output_ns);
    executions += b.executions;
  }
  m->set_execution_count(executions);
  return response;
}

namespace {

// Field `f` of `m`: element `index` of a repeated field, or the field itself when index < 0.
json field_json(const Message& m, const FieldDescriptor* f, int index) {
  const auto* r = m.GetReflection();
  const bool one = index < 0;
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      return one ? r->GetInt32(m, f) : r->GetRepeatedInt32(m, f, index);
    case FieldDescriptor::CPPTYPE_INT64:
      return one ? r->GetInt64(m, f) : r->GetRepeatedInt64(m, f, index);
    case FieldDescriptor::CPPTYPE_UINT32:
      return one ? r->GetUInt32(m, f) : r->GetRepeatedUInt32(m, f, index);
    case FieldDescriptor::CPPTYPE_UINT64:
      return one ? r->GetUInt64(m, f) : r->GetRepeatedUInt64(m, f, index);
    case FieldDescriptor::CPPTYPE_DOUBLE:
      return one ? r->GetDouble(m, f) : r->GetRepeatedDouble(m, f, index);
    case FieldDescriptor::CPPTYPE_FLOAT:
      return one ? r->GetFloat(m, f) : r->GetRepeatedFloat(m, f, index);
    case FieldDescriptor::CPPTYPE_BOOL:
      return one ? r->GetBool(m, f) : r->GetRepeatedBool(m, f, index);
    case FieldDescriptor::CPPTYPE_ENUM:
      return (one ? r->GetEnum(m, f) : r->GetRepeatedEnum(m, f, index))->name();
    case FieldDescriptor::CPPTYPE_STRING:
      return one ? r->GetString(m, f) : r->GetRepeatedString(m, f, index);
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return message_json(one ? r->GetMessage(m, f) : r->GetRepeatedMessage(m, f, index));
  }
  return nullptr;
}

}  // namespace

json message_json(const Message& m) {
  const auto* d = m.GetDescriptor();
  const auto* r = m.GetReflection();
  json out = json::object();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->is_map()) {  // repeated entries with a key and a value: an object keyed by the key's text
      json entries = json::object();
      for (int k = 0; k < r->FieldSize(m, f); ++k) {
        const Message& entry = r->GetRepeatedMessage(m, f, k);
        const json key = field_json(entry, f->message_type()->map_key(), -1);
        entries[key.is_string() ? key.get<std::string>() : key.dump()] =
            field_json(entry, f->message_type()->map_value(), -1);
      }
      out[f->name()] = std::move(entries);
    } else if (f->is_repeated()) {
      json values = json::array();
      for (int k = 0; k < r->FieldSize(m, f); ++k) values.push_back(field_json(m, f, k));
      out[f->name()] = std::move(values);
    } else if ((f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE && !f->containing_oneof()) || r->HasField(m, f)) {
      out[f->name()] = field_json(m, f, -1);
    }
  }
  return out;
}

}  // namespace toptag
