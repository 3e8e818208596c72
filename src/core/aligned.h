// 64-byte aligned storage for buffers that the kernels stream: rows that start
// on a cache line are read and written without split lines (a misaligned
// f32 C of an output layer's dW ran the bf16 GEMM at 466 instead of 636 GFLOP/s).
#pragma once
#include <cstddef>
#include <new>
#include <vector>

namespace tessera {

constexpr size_t kCacheLine = 64;

template <class T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <class U>
  AlignedAllocator(const AlignedAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kCacheLine))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(kCacheLine)); }
  template <class U>
  bool operator==(const AlignedAllocator<U>&) const {
    return true;
  }
};

template <class T>
using aligned_vector = std::vector<T, AlignedAllocator<T>>;

}  // namespace tessera
