#include "core/aligned.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdint>

#include "core/error.h"

namespace tessera {

namespace {
size_t huge_length(size_t bytes) { return (std::max<size_t>(bytes, 1) + kHugePage - 1) / kHugePage * kHugePage; }
}  // namespace

void* huge_allocate(size_t bytes) {
  // One page more than needed, then the unaligned head and the tail unmapped.
  const size_t len = huge_length(bytes), map = len + kHugePage;
  void* m = mmap(nullptr, map, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t base = reinterpret_cast<uintptr_t>(m), at = (base + kHugePage - 1) & ~uintptr_t(kHugePage - 1);
  if (at > base) munmap(m, at - base);
  if (base + map > at + len) munmap(reinterpret_cast<void*>(at + len), base + map - (at + len));
  void* p = reinterpret_cast<void*>(at);
  madvise(p, len, MADV_HUGEPAGE);  // advice only: without THP the mapping keeps 4 KiB pages
  return p;
}

void huge_deallocate(void* p, size_t bytes) { munmap(p, huge_length(bytes)); }

void require_memory(double bytes, const std::string& what, const std::string& hint) {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return;  // unknown: let the allocation decide
  const double have = double(pages) * double(page), gib = double(1 << 30);
  if (bytes > have) {
    char buf[96];
    std::snprintf(buf, sizeof buf, " %.1f GiB, more than this machine's %.1f GiB of memory", bytes / gib, have / gib);
    fail(what, buf, hint.empty() ? "" : "; ", hint);
  }
}

}  // namespace tessera
