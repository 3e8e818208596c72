#include "core/aligned.h"

#include <sys/mman.h>

namespace tessera {

void* huge_allocate(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  madvise(p, bytes, MADV_HUGEPAGE);  // advice only: without THP the mapping keeps 4 KiB pages
  return p;
}

void huge_deallocate(void* p, size_t bytes) { munmap(p, bytes); }

}  // namespace tessera
