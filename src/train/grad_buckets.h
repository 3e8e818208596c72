// ZeRO stages 2 and 3's buckets: the flat gradient buffer cut into the
// ranges that become final together during the backward pass (one per block,
// in the order the backward finishes them, then the rest: embeddings, final
// norm, output layer, multi-token prediction modules). As soon as a bucket is
// final it is reduce-scattered (each rank receives the sum of the part of it
// that lies in its shard) and its pages are handed back to the system, so a
// rank holds its shard's reduced gradient plus the buckets in flight, not a
// full-size gradient buffer (Rajbhandari et al., P_os+g). Stage 3 does the same to
// the weights: a block's are all-gathered just before its forward and again
// before its backward and dropped after each (P_os+g+p).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "train/communicator.h"
#include "train/params.h"

namespace tessera::train {

class GradBuckets {
 public:
  // shard_off: the ranks' parts of the flat buffer (size() + 1 offsets) as the
  // Trainer shards it; this rank's part is [shard_off[rank], shard_off[rank + 1]).
  GradBuckets(const Layout& L, const std::vector<size_t>& shard_off, int rank);

  // Block l's bucket(s) (l < n_layers), or with l = -1 the rest, are final in g:
  // reduce-scatter them into gs (this rank's part; = on the first micro-batch of a
  // step, += on the others), then zero them in g (its pages returned: a released
  // page reads as zero, so the next backward accumulates into zeros).
  void reduce(int64_t l, float* g, float* gs, bool first, Communicator& comm);
  // Stage 0's overlap: block l's bucket(s) (-1: the rest) all-reduced in g, started
  // without waiting (Communicator::wait_all completes them).
  void start_all_reduce(int64_t l, float* g, Communicator& comm);

  // ZeRO-3's weights. gather: block l's bucket(s) (-1: the rest) whole in p, every rank's
  // part all-gathered in place. drop: the parts of them outside this rank's shard handed
  // back (they read as zeros until gathered again); the peak resident bytes of p are
  // measured just before. drop_all: everything outside this rank's shard.
  void gather(int64_t l, float* p, Communicator& comm);
  void drop(int64_t l, float* p);
  void drop_all(float* p);
  size_t peak_weights() const { return peak_w_; }

  // Small (4 KiB) pages for a buffer whose buckets are released: a huge page would make a
  // bucket's first write fault in 2 MiB, its neighbours' zeros included (core/aligned.h
  // advises large buffers for huge pages).
  static void small_pages(float* x, size_t n);
  // Hands every page of g (n elements) back; g reads as zeros afterwards.
  static void release(float* g, size_t n);
  // Bytes of g (n elements) resident in memory now (mincore over its pages; pages: scratch).
  static size_t resident_bytes(const float* g, size_t n, std::vector<unsigned char>& pages);
  // The most bytes of the full-size buffer resident at once, measured just before
  // each bucket was released: the gradient buckets in flight.
  size_t peak_in_flight() const { return peak_; }
  // Elements in flight at the worst moment by the layout: the rest (held from the
  // output layer's backward, which comes first, to the embedding's, which comes
  // last) plus the largest block. What tessera memory --zero 2 adds for a model.
  static size_t in_flight_elements(const Layout& L);
  // Elements outside the blocks' buckets (gathered once per step at stage 3, the blocks twice).
  static size_t rest_elements(const Layout& L);
  size_t tmp_bytes() const { return tmp_.size() * sizeof(float); }

 private:
  struct Range {
    size_t b = 0, e = 0;
    int64_t layer = -1;  // -1: the rest
  };
  static std::vector<Range> ranges(const Layout& L);
  std::vector<Range> ranges_;
  std::vector<size_t> off_;
  int rank_ = 0;
  size_t peak_ = 0, n_ = 0, peak_w_ = 0;
  void drop_range(float* p, size_t b, size_t e);  // [b, e) minus this rank's shard
  ParamVec tmp_;  // a later micro-batch's reduced part before it is added to gs (grad_accum > 1)
  std::vector<size_t> part_;          // a bucket's split over the ranks (scratch, size() + 1)
  std::vector<unsigned char> pages_;  // mincore's answer (scratch)
  const std::vector<size_t>& parts_of(const Range& r);  // part_ for bucket r
};

}  // namespace tessera::train
