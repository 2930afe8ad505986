// The "parameters" of a KServe v2 request, of its input and of its outputs, as either front end
// received them. toptag honours a parameter or refuses the request naming it: a parameter it does
// not know is never silently ignored, since a client that sends one expects it to change something.
//
// Honoured, by whom:
//   request  timeout             service: the answer is refused once this many microseconds passed
//            priority            service: 0 only (toptag's queue has one level)
//            binary_data_output  HTTP front end (gRPC answers are always raw)
//   input    binary_data_size    HTTP front end
//   input    shared_memory_*     service: the input is read from a registered region
//   output   classification      service: Triton's classification extension
//            shared_memory_*     service: the output is written to a registered region, not sent
//            binary_data         HTTP front end
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>

namespace toptag {

using ParameterValue = std::variant<bool, int64_t, double, std::string>;
using Parameters = std::map<std::string, ParameterValue>;

// Throws RequestError(invalid) naming the first parameter of `p` that is not in `known`, where it
// was found (`where`: "the request", "input 'images'", ...) and what is honoured there.
void refuse_unknown_parameters(const Parameters& p, std::span<const std::string_view> known, const std::string& where);

// The value of parameter `key`, if present; throws RequestError(invalid) if it has another type.
std::optional<int64_t> integer_parameter(const Parameters& p, const std::string& key, const std::string& where);
std::optional<bool> flag_parameter(const Parameters& p, const std::string& key, const std::string& where);

// A tensor's place in a client's system shared memory (Triton's shared_memory extension), from its
// parameters shared_memory_region (a string), shared_memory_byte_size and shared_memory_offset
// (integers >= 0; the offset defaults to 0).
struct SharedMemoryRef {
  std::string region;
  uint64_t byte_size = 0, offset = 0;
};
inline constexpr std::string_view kSharedMemoryParameters[] = {"shared_memory_region", "shared_memory_byte_size",
                                                               "shared_memory_offset"};
// The tensor's reference, if its parameters name a region; throws RequestError(invalid) if they are
// incomplete (a size without a region, a region without a size) or of the wrong types.
std::optional<SharedMemoryRef> shared_memory_ref(const Parameters& p, const std::string& where);

}  // namespace toptag
