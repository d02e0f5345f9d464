#pragma once
// Errors. Two kinds, one macro each:
//  - LMF_CHECK(cond, fmt, args...): an internal invariant; the message names the check and file:line.
//  - throw UserError(fmt, args...): bad input from the user (a file, a field, a flag). The CLI
//    prints it as one line and exits with code 2; nothing else is printed.
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace lmf {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Bad input: a file, a config field, a flag. `what()` is the whole line shown to the user.
struct UserError : Error {
  using Error::Error;
  template <class... Args>
  explicit UserError(fmt::format_string<Args...> f, Args&&... args)
      : Error(fmt::format(f, std::forward<Args>(args)...)) {}
};

[[noreturn]] void check_failed(const char* cond, const char* file, int line, const std::string& msg);

}  // namespace lmf

#define LMF_CHECK(cond, ...)                                                          \
  do {                                                                                \
    if (!(cond)) [[unlikely]]                                                         \
      ::lmf::check_failed(#cond, __FILE__, __LINE__, ::fmt::format(__VA_ARGS__));     \
  } while (0)
