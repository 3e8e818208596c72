// OpenBLAS set-up: the core type it runs on and its thread count.
//
// Debian's OpenBLAS is a DYNAMIC_ARCH build that picks its kernels when the
// library loads, from OPENBLAS_CORETYPE if set, else from cpuid. Some
// environments set OPENBLAS_CORETYPE=Haswell, which on an AVX-512 CPU halves
// sgemm (AVX2 kernels). ensure_openblas_coretype() fixes that at the start of
// main(), before any BLAS call:
//   1. nothing to do when the CPU lacks AVX-512 or OpenBLAS already runs an
//      AVX-512 core (SkylakeX, Cooperlake, SapphireRapids), or when
//      TESSERA_NO_REEXEC is set (leave the process as it is);
//   2. otherwise set OPENBLAS_CORETYPE=SkylakeX and re-run OpenBLAS's own core
//      selection in-process (gotoblas_dynamic_quit / gotoblas_dynamic_init,
//      exported by DYNAMIC_ARCH builds; safe before the first BLAS call since
//      the OpenMP build keeps no thread pool of its own);
//   3. if that is unavailable or did not take, re-exec /proc/self/exe with the
//      variable set (and TESSERA_NO_REEXEC=1, so it happens at most once).
#pragma once
#include <string>

namespace tessera {

// Returns true when it switched the core in-process; does not return when it
// re-executes; false when nothing was needed or possible.
bool ensure_openblas_coretype(int argc, char** argv);

// The core OpenBLAS runs on (openblas_get_corename), e.g. "SkylakeX".
std::string openblas_core_name();

// Sets OpenBLAS's thread count (it uses our OpenMP runtime, so the threads are shared).
void set_blas_threads(int n);

}  // namespace tessera
