// SplitMix64: a counter-based mixer. Deterministic streams from (seed, index)
// pairs, so work can be split between threads (and runs resumed) without
// carrying generator state.
#pragma once
#include <cstdint>

namespace tessera {

inline uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace tessera
