// Helpers shared by the tests: locating ../shared and skipping without it.
#pragma once
#include <gtest/gtest.h>
#include <omp.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

namespace tessera::test {

inline std::string shared_path(const std::string& rel) { return std::string(TESSERA_SHARED_DIR) + "/" + rel; }

// GTEST_SKIP()s the calling test (use via the macro) when the file is absent.
#define TESSERA_REQUIRE_SHARED(rel)                                                        \
  do {                                                                                     \
    if (!std::filesystem::exists(::tessera::test::shared_path(rel)))                       \
      GTEST_SKIP() << "../shared/" << (rel) << " not found (tests need ../shared beside the repo)"; \
  } while (0)

inline std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("tessera_test_" + std::to_string(::getpid()) + "_" + name)).string();
}

// Writes the first `bytes` bytes of ../shared/REL to path (a small corpus for a test).
inline void copy_shared_prefix(const std::string& rel, size_t bytes, const std::string& path) {
  std::ifstream in(shared_path(rel));
  std::string text(bytes, '\0');
  in.read(text.data(), std::streamsize(text.size()));
  text.resize(size_t(in.gcount()));
  std::ofstream(path) << text;
}

// One OpenMP thread for the scope (thousands of tiny passes in finite-difference
// checks: no thread start-up per pass); the previous count comes back after it.
class OneThread {
 public:
  OneThread() : n_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~OneThread() { omp_set_num_threads(n_); }
  OneThread(const OneThread&) = delete;
  OneThread& operator=(const OneThread&) = delete;

 private:
  int n_;
};

}  // namespace tessera::test
