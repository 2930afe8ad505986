// Configuration structs to and from JSON through one table of keys: a struct declares
//   template <class C, class F> void for_each_field(C& c, F&& f) { f("key", c.member); ... }
// (found by argument-dependent lookup), and both directions walk that table, so a field added to
// the table is written and read back without a second list to keep in step.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "nn/check.h"

namespace toptag {

template <class T>
nlohmann::json fields_to_json(const T& value) {
  nlohmann::json j = nlohmann::json::object();
  for_each_field(value, [&](const char* key, const auto& member) { j[key] = member; });
  return j;
}

// Sets every field whose key `j` holds; fields it lacks (written by an older toptag) keep their
// current values. A key holding the wrong JSON type is an error naming `source` and the key.
template <class T>
void fields_from_json(const nlohmann::json& j, T& value, const std::string& source) {
  if (!j.is_object()) fail("{}: the stored configuration is not a JSON object", source);
  for_each_field(value, [&](const char* key, auto& member) {
    const auto it = j.find(key);
    if (it == j.end()) return;
    try {
      it->get_to(member);
    } catch (const nlohmann::json::exception&) {
      fail("{}: configuration key '{}' holds {}, which is not a valid value", source, key, it->dump());
    }
  });
}

// Parses `text` as JSON; an error names `source`.
inline nlohmann::json parse_json(const std::string& text, const std::string& source) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) fail("{}: the stored configuration is not valid JSON", source);
  return j;
}

}  // namespace toptag
