// 64-byte aligned storage for buffers that the kernels stream: rows that start
// on a cache line are read and written without split lines (split lines in
// the GEMMs' outputs cost them a quarter of their speed; docs/kernels.md).
// Large buffers also get huge pages (below).
#pragma once
#include <cstddef>
#include <new>
#include <string>
#include <vector>

namespace tessera {

constexpr size_t kCacheLine = 64;
// Buffers from this size up are their own anonymous mapping, advised for
// transparent huge pages (MADV_HUGEPAGE: the kernel's "madvise" THP mode
// gives them 2 MiB pages). Strided GEMM operands (rows 128 KB apart in an
// output layer's logits) then miss the TLB far less: the output layer's
// input-gradient product ran 2-6% faster in a standalone A/B.
constexpr size_t kHugeMin = size_t(8) << 20;
constexpr size_t kHugePage = size_t(2) << 20;
// A mapping of bytes rounded up to whole 2 MiB pages, 2 MiB aligned (so every
// page of it can be a huge page), advised for THP. Throws std::bad_alloc.
void* huge_allocate(size_t bytes);
void huge_deallocate(void* p, size_t bytes);  // the same bytes as allocated

// Throws Error "<what> X GiB, more than this machine's Y GiB of memory[; hint]"
// when bytes exceed the physical memory: a buffer sized from a flag (-c,
// --seq, --batch) that cannot fit gets a message naming the flag instead of
// std::bad_alloc or the OOM killer. bytes is a double so that absurd sizes
// are checked before any integer product overflows.
void require_memory(double bytes, const std::string& what, const std::string& hint = "");

// Buffers of HugeFrom bytes and up come from huge_allocate, smaller ones are
// cache-line aligned heap blocks.
template <class T, size_t HugeFrom = kHugeMin>
struct AlignedAllocator {
  using value_type = T;
  template <class U>
  struct rebind {
    using other = AlignedAllocator<U, HugeFrom>;
  };
  AlignedAllocator() = default;
  template <class U>
  AlignedAllocator(const AlignedAllocator<U, HugeFrom>&) {}
  T* allocate(size_t n) {
    if (n * sizeof(T) >= HugeFrom) return static_cast<T*>(huge_allocate(n * sizeof(T)));
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kCacheLine)));
  }
  void deallocate(T* p, size_t n) {
    if (n * sizeof(T) >= HugeFrom) return huge_deallocate(p, n * sizeof(T));
    ::operator delete(p, std::align_val_t(kCacheLine));
  }
  template <class U>
  bool operator==(const AlignedAllocator<U, HugeFrom>&) const {
    return true;
  }
};

template <class T>
using aligned_vector = std::vector<T, AlignedAllocator<T>>;

// Always huge-page advised, whatever the size: for buffers read in short runs
// scattered over a few MiB, where 4 KiB pages cost a TLB miss per run (the
// KV cache: a decode attention of 18 heads x 100 positions of a 15M model ran
// ~42 instead of ~70 us cold).
template <class T>
using huge_vector = std::vector<T, AlignedAllocator<T, 0>>;

}  // namespace tessera
