// 64-byte aligned storage for buffers that the kernels stream: rows that start
// on a cache line are read and written without split lines (a misaligned
// f32 C of an output layer's dW ran the bf16 GEMM at 466 instead of 636 GFLOP/s).
// Large buffers also get huge pages (below).
#pragma once
#include <cstddef>
#include <new>
#include <vector>

namespace tessera {

constexpr size_t kCacheLine = 64;
// Buffers from this size up are their own anonymous mapping, advised for
// transparent huge pages (MADV_HUGEPAGE: the kernel's "madvise" THP mode
// gives them 2 MiB pages). Strided GEMM operands (rows 128 KB apart in an
// output layer's logits) then miss the TLB far less: the output layer's
// input-gradient product ran 2-6% faster in a standalone A/B.
constexpr size_t kHugeMin = size_t(8) << 20;
void* huge_allocate(size_t bytes);  // throws std::bad_alloc
void huge_deallocate(void* p, size_t bytes);

template <class T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <class U>
  AlignedAllocator(const AlignedAllocator<U>&) {}
  T* allocate(size_t n) {
    if (n * sizeof(T) >= kHugeMin) return static_cast<T*>(huge_allocate(n * sizeof(T)));
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kCacheLine)));
  }
  void deallocate(T* p, size_t n) {
    if (n * sizeof(T) >= kHugeMin) return huge_deallocate(p, n * sizeof(T));
    ::operator delete(p, std::align_val_t(kCacheLine));
  }
  template <class U>
  bool operator==(const AlignedAllocator<U>&) const {
    return true;
  }
};

template <class T>
using aligned_vector = std::vector<T, AlignedAllocator<T>>;

}  // namespace tessera
