// Runs the tessera CLI from tests and captures its output and exit code.
#pragma once
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "test_util.h"

namespace tessera::test {

struct CliResult {
  int code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// args is appended to the binary path as-is (quote paths yourself).
inline CliResult run_cli(const std::string& args) {
  static int counter = 0;
  const std::string err_path = temp_path("stderr_" + std::to_string(++counter));
  const std::string cmd = std::string(TESSERA_CLI) + " " + args + " 2>" + err_path + " </dev/null";
  CliResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  r.err = slurp(err_path);
  std::remove(err_path.c_str());
  return r;
}

inline std::string q(const std::string& s) { return "'" + s + "'"; }

}  // namespace tessera::test
