#include "core/error.h"

namespace lmf {

void check_failed(const char* cond, const char* file, int line, const std::string& msg) {
  throw Error(fmt::format("internal check failed: {} ({}) at {}:{}", msg, cond, file, line));
}

}  // namespace lmf
