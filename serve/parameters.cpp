#include "serve/parameters.h"

#include <fmt/format.h>

#include "serve/request_error.h"

namespace toptag {

void refuse_unknown_parameters(const Parameters& p, std::span<const std::string_view> known, const std::string& where) {
  for (const auto& [key, value] : p) {
    bool found = false;
    for (std::string_view k : known) found = found || k == key;
    if (found) continue;
    const std::string honoured = known.empty() ? "none" : fmt::format("{}", fmt::join(known, ", "));
    throw invalid(fmt::format("parameter '{}' of {} is not supported by toptag serve (honoured there: {})", clip(key),
                              where, honoured));
  }
}

std::optional<int64_t> integer_parameter(const Parameters& p, const std::string& key, const std::string& where) {
  const auto it = p.find(key);
  if (it == p.end()) return std::nullopt;
  if (const int64_t* v = std::get_if<int64_t>(&it->second)) return *v;
  throw invalid(fmt::format("parameter '{}' of {} must be an integer", key, where));
}

std::optional<bool> flag_parameter(const Parameters& p, const std::string& key, const std::string& where) {
  const auto it = p.find(key);
  if (it == p.end()) return std::nullopt;
  if (const bool* v = std::get_if<bool>(&it->second)) return *v;
  throw invalid(fmt::format("parameter '{}' of {} must be true or false", key, where));
}

std::optional<SharedMemoryRef> shared_memory_ref(const Parameters& p, const std::string& where) {
  const auto region = p.find("shared_memory_region");
  if (region == p.end()) {
    for (std::string_view key : kSharedMemoryParameters)
      if (p.contains(std::string(key)))
        throw invalid(fmt::format("parameter '{}' of {} needs shared_memory_region", key, where));
    return std::nullopt;
  }
  SharedMemoryRef ref;
  if (const std::string* name = std::get_if<std::string>(&region->second))
    ref.region = *name;
  else
    throw invalid(fmt::format("parameter 'shared_memory_region' of {} must be a string", where));
  const std::optional<int64_t> size = integer_parameter(p, "shared_memory_byte_size", where);
  const int64_t offset = integer_parameter(p, "shared_memory_offset", where).value_or(0);
  if (!size)
    throw invalid(
        fmt::format("{} names shared-memory region '{}' without shared_memory_byte_size", where, clip(ref.region)));
  if (*size < 0 || offset < 0)
    throw invalid(
        fmt::format("shared_memory_byte_size {} and shared_memory_offset {} of {} must be >= 0", *size, offset, where));
  ref.byte_size = static_cast<uint64_t>(*size);
  ref.offset = static_cast<uint64_t>(offset);
  return ref;
}

}  // namespace toptag
