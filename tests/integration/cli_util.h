#pragma once
// Runs the lmforge binary and captures its exit code, stdout and stderr.
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "test_util.h"

namespace lmf::test {

struct CmdResult {
  int code = -1;
  std::string out, err;
};

// `args` is appended to the binary's path as is (the caller quotes).
inline CmdResult run_lmforge(const std::string& args, const std::filesystem::path& scratch) {
  auto out = scratch / "stdout.txt", err = scratch / "stderr.txt";
  std::string cmd = std::string(LMF_BINARY) + " " + args + " >" + out.string() + " 2>" + err.string() + " </dev/null";
  int status = std::system(cmd.c_str());
  CmdResult r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

inline int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

// Bad input: exit code 2 and exactly one line on stderr that contains `needle`.
inline void expect_user_error(const CmdResult& r, const std::string& needle) {
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "'" << needle << "' not in: " << r.err;
}

}  // namespace lmf::test
