// Errors, two tiers (docs/STYLE.md rule 6):
//  - toptag::Error is thrown at boundaries (files, CLI, network requests, tensor shapes handed to ops)
//    and says which file, field, tensor or shape is wrong. Library code never calls exit().
//  - TT_ASSERT guards internal invariants inside kernels and compiles out in release builds.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <utility>

namespace toptag {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

[[noreturn]] void assert_failed(const char* condition, const char* file, int line);

}  // namespace toptag

#ifdef NDEBUG
#define TT_ASSERT(condition) ((void)0)
#else
#define TT_ASSERT(condition) ((condition) ? (void)0 : ::toptag::assert_failed(#condition, __FILE__, __LINE__))
#endif
