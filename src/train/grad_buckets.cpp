#include "train/grad_buckets.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace tessera::train {

namespace {
size_t page_size() { return size_t(sysconf(_SC_PAGESIZE)); }

// Block index of a "blk.<l>." tensor below n_layers, else -1 (the rest).
int64_t block_of(const std::string& name, int64_t n_layers) {
  if (name.rfind("blk.", 0) != 0) return -1;
  const int64_t l = std::strtoll(name.c_str() + 4, nullptr, 10);
  return l < n_layers ? l : -1;
}
}  // namespace

std::vector<GradBuckets::Range> GradBuckets::ranges(const Layout& L) {
  std::vector<const ParamInfo*> t;
  for (const auto& p : L.tensors) t.push_back(&p);
  std::sort(t.begin(), t.end(), [](const ParamInfo* a, const ParamInfo* b) { return a->offset < b->offset; });
  std::vector<Range> out;
  for (size_t i = 0; i < t.size(); ++i) {
    // A tensor's range runs to the next tensor (its alignment padding included).
    const size_t b = i == 0 ? 0 : t[i]->offset, e = i + 1 < t.size() ? t[i + 1]->offset : L.total;
    const int64_t l = block_of(t[i]->name, L.cfg.n_layers);
    if (!out.empty() && out.back().layer == l && out.back().e == b)
      out.back().e = e;
    else
      out.push_back({b, e, l});
  }
  return out;
}

GradBuckets::GradBuckets(const Layout& L, const std::vector<size_t>& shard_off, int rank)
    : ranges_(ranges(L)), off_(shard_off), rank_(rank), n_(L.total) {}

size_t GradBuckets::in_flight_elements(const Layout& L) {
  std::vector<size_t> block(size_t(L.cfg.n_layers), 0);
  size_t rest = 0;
  for (const Range& r : ranges(L)) (r.layer < 0 ? rest : block[size_t(r.layer)]) += r.e - r.b;
  return rest + (block.empty() ? 0 : *std::max_element(block.begin(), block.end()));
}

size_t GradBuckets::rest_elements(const Layout& L) {
  size_t rest = 0;
  for (const Range& r : ranges(L))
    if (r.layer < 0) rest += r.e - r.b;
  return rest;
}

void GradBuckets::small_pages(float* x, size_t n) {
  const size_t ps = page_size();
  const uintptr_t a = (reinterpret_cast<uintptr_t>(x) + ps - 1) / ps * ps, z = reinterpret_cast<uintptr_t>(x + n) / ps * ps;
  if (z > a) madvise(reinterpret_cast<void*>(a), z - a, MADV_NOHUGEPAGE);  // advice: harmless where refused
}

void GradBuckets::release(float* g, size_t n) {
  const size_t ps = page_size();
  const uintptr_t a = reinterpret_cast<uintptr_t>(g), z = a + n * sizeof(float);
  const uintptr_t pa = (a + ps - 1) / ps * ps, pz = z / ps * ps;
  if (pz <= pa) {
    std::memset(g, 0, n * sizeof(float));
    return;
  }
  std::memset(g, 0, pa - a);  // the partial pages at both ends (shared with neighbours): zeroed
  std::memset(reinterpret_cast<void*>(pz), 0, z - pz);
  if (madvise(reinterpret_cast<void*>(pa), pz - pa, MADV_DONTNEED) != 0)  // whole pages: back to the system
    std::memset(reinterpret_cast<void*>(pa), 0, pz - pa);
}

size_t GradBuckets::resident_bytes(const float* g, size_t n, std::vector<unsigned char>& in) {
  const size_t ps = page_size();
  const uintptr_t a = reinterpret_cast<uintptr_t>(g) / ps * ps;
  const uintptr_t z = (reinterpret_cast<uintptr_t>(g + n) + ps - 1) / ps * ps;
  in.resize((z - a) / ps);  // sized once: the same buffer every call
  if (in.empty() || mincore(reinterpret_cast<void*>(a), z - a, in.data()) != 0) return n * sizeof(float);
  size_t pages = 0;
  for (unsigned char c : in) pages += c & 1;
  return std::min(pages * ps, n * sizeof(float));
}

const std::vector<size_t>& GradBuckets::parts_of(const Range& r) {
  part_.resize(off_.size());
  for (size_t k = 0; k < part_.size(); ++k) part_[k] = std::clamp(off_[k], r.b, r.e);
  return part_;
}

void GradBuckets::reduce(int64_t l, float* g, float* gs, bool first, Communicator& comm) {
  for (const Range& r : ranges_) {
    if (r.layer != l) continue;
    peak_ = std::max(peak_, resident_bytes(g, n_, pages_));
    const std::vector<size_t>& part = parts_of(r);
    const size_t mb = part[size_t(rank_)], me = part[size_t(rank_) + 1];
    float* dst = gs + (mb - off_[size_t(rank_)]);
    if (first || me == mb) {
      comm.reduce_scatter_sum(g, dst, part);
    } else {  // a later micro-batch: reduce into scratch, add to the shard
      if (tmp_.size() < me - mb) tmp_.assign(me - mb, 0.f);
      comm.reduce_scatter_sum(g, tmp_.data(), part);
      for (size_t i = 0; i < me - mb; ++i) dst[i] += tmp_[i];
    }
    release(g + r.b, r.e - r.b);
  }
}

void GradBuckets::start_all_reduce(int64_t l, float* g, Communicator& comm) {
  for (const Range& r : ranges_)
    if (r.layer == l) comm.start_all_reduce_sum(g + r.b, r.e - r.b);
  comm.progress();
}

void GradBuckets::gather(int64_t l, float* p, Communicator& comm) {
  for (const Range& r : ranges_)
    if (r.layer == l) comm.all_gather(p, parts_of(r));
}

void GradBuckets::drop_range(float* p, size_t b, size_t e) {
  const size_t sb = off_[size_t(rank_)], se = off_[size_t(rank_) + 1];
  if (b < std::min(e, sb)) release(p + b, std::min(e, sb) - b);
  if (std::max(b, se) < e) release(p + std::max(b, se), e - std::max(b, se));
}

void GradBuckets::drop(int64_t l, float* p) {
  peak_w_ = std::max(peak_w_, resident_bytes(p, n_, pages_));
  for (const Range& r : ranges_)
    if (r.layer == l) drop_range(p, r.b, r.e);
}

void GradBuckets::drop_all(float* p) { drop_range(p, 0, n_); }

}  // namespace tessera::train
