#include "kernels/blas_env.h"

#include <cblas.h>
#include <dlfcn.h>
#include <strings.h>
#include <unistd.h>

#include <cstdlib>

namespace tessera {
namespace {

bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

bool is_avx512_core(const std::string& name) {
  for (const char* c : {"SkylakeX", "Cooperlake", "SapphireRapids"})
    if (strcasecmp(name.c_str(), c) == 0) return true;
  return false;
}

// Re-runs OpenBLAS's core selection (reads OPENBLAS_CORETYPE again).
bool reselect_core_in_process() {
  using Fn = void (*)();
  auto quit = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "gotoblas_dynamic_quit"));
  auto init = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "gotoblas_dynamic_init"));
  if (!quit || !init) return false;
  quit();
  init();
  return is_avx512_core(openblas_core_name());
}

}  // namespace

std::string openblas_core_name() {
  const char* s = openblas_get_corename();
  return s ? std::string(s) : std::string();
}

void set_blas_threads(int n) {
  if (openblas_get_num_threads() != n) openblas_set_num_threads(n);
}

bool ensure_openblas_coretype(int /*argc*/, char** argv) {
  if (std::getenv("TESSERA_NO_REEXEC")) return false;
  if (!cpu_has_avx512() || is_avx512_core(openblas_core_name())) return false;
  setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
  if (reselect_core_in_process()) return true;
  if (!argv) return false;
  setenv("TESSERA_NO_REEXEC", "1", 1);
  execv("/proc/self/exe", argv);
  return false;  // exec failed: carry on with the slower core
}

}  // namespace tessera
