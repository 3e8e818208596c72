// <immintrin.h> for the per-ISA kernel files (which get their -m flags from
// CMake; this header sets none). GCC 12's AVX-512 intrinsics initialise their
// "undefined" vectors from themselves, which -Wall reports as uninitialised
// use inside the system header (GCC PR 105593, fixed in GCC 13); those two
// warnings are silenced for the intrinsics only.
#pragma once
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
