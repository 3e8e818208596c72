#include "model/kv_cache.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace tessera {

KVCache::KVCache(const ModelConfig& cfg, const KVCacheOptions& opt)
    : n_layers_(cfg.n_layers + std::max<int64_t>(opt.extra_layers, 0)),
      kv_dim_(cfg.cache_kv_dim()),
      bs_(opt.block_size),
      n_blocks_(opt.n_blocks),
      n_kv_(cfg.cache_v_in_k() ? 1 : 2),
      type_(opt.type) {
  if (bs_ <= 0) fail("KV cache: block size must be > 0, got ", bs_);
  if (n_blocks_ <= 0) fail("KV cache: the pool needs at least one block, got ", n_blocks_);
  if (n_blocks_ > INT32_MAX) fail("KV cache: ", n_blocks_, " blocks is more than block ids can name");
  if (type_ != DType::F32 && type_ != DType::F16 && type_ != DType::Q8_0)
    fail("KV cache: type ", dtype_name(type_), " is not supported (f32, f16, q8_0)");
  if (kv_dim_ % dtype_block_elems(type_) != 0)
    fail("KV cache: ", dtype_name(type_), " needs key/value rows that are a multiple of ", dtype_block_elems(type_),
         " elements; this model's are ", kv_dim_);
  const double bytes = double(n_kv_) * double(n_layers_) * double(n_blocks_) * double(bs_) * double(row_bytes());
  require_memory(bytes, "KV cache of " + std::to_string(n_blocks_) + " blocks of " + std::to_string(bs_) +
                            " positions", "lower -c or the number of KV blocks");
  layer_bytes_ = size_t(n_blocks_ * bs_) * row_bytes();
  data_.assign(size_t(bytes), 0);
  refs_.assign(size_t(n_blocks_), 0);
  tok_.assign(size_t(n_blocks_ * bs_), -1);
  if (opt.hidden > 0) {
    const double hb = 4.0 * double(n_blocks_) * double(bs_) * double(opt.hidden);
    require_memory(hb, "KV cache hidden states", "lower -c");
    hidden_ = opt.hidden;
    hid_.assign(size_t(n_blocks_ * bs_ * hidden_), 0.f);
  }
  free_.resize(size_t(n_blocks_));
  for (int64_t i = 0; i < n_blocks_; ++i) free_[size_t(i)] = int32_t(n_blocks_ - 1 - i);
  if (opt.prefix_len > 0) {
    P_ = opt.prefix_len;
    const int64_t nb = (P_ + bs_ - 1) / bs_;
    if (nb >= n_blocks_) fail("KV cache: a prefix of ", P_, " positions fills the pool of ", n_blocks_, " blocks");
    for (int64_t i = 0; i < nb; ++i) prefix_blocks_.push_back(take_block());
  }
}

void KVCache::check_seq(int32_t seq, const char* what) const {
  if (seq < 0 || size_t(seq) >= seqs_.size() || !seqs_[size_t(seq)].live)
    fail("KV cache ", what, ": sequence ", seq, " does not exist");
}

int32_t KVCache::add_seq() {
  for (size_t i = 0; i < seqs_.size(); ++i)
    if (!seqs_[i].live) {
      seqs_[i] = Seq{prefix_blocks_, P_, true};
      for (int32_t b : prefix_blocks_) ++refs_[size_t(b)];
      return int32_t(i);
    }
  seqs_.push_back(Seq{prefix_blocks_, P_, true});
  for (int32_t b : prefix_blocks_) ++refs_[size_t(b)];
  return int32_t(seqs_.size() - 1);
}

void KVCache::free_seq(int32_t seq) {
  check_seq(seq, "free");
  Seq& s = seqs_[size_t(seq)];
  for (int32_t b : s.blocks) release(b);
  s.blocks.clear(), s.len = 0, s.live = false;
}

int32_t KVCache::fork(int32_t src) {
  check_seq(src, "fork");
  const int32_t id = add_seq();
  Seq& s = seqs_[size_t(src)];  // after add_seq: seqs_ may have grown
  seqs_[size_t(id)].blocks = s.blocks;
  seqs_[size_t(id)].len = s.len;
  for (int32_t b : s.blocks) ++refs_[size_t(b)];
  return id;
}

void KVCache::truncate(int32_t seq, int64_t n) {
  check_seq(seq, "truncate");
  Seq& s = seqs_[size_t(seq)];
  if (n < 0 || n + P_ > s.len)
    fail("KV cache truncate: sequence ", seq, " has ", s.len - P_, " positions, cannot keep ", n);
  n += P_;  // cache positions from here
  const size_t keep = size_t((n + bs_ - 1) / bs_);
  while (s.blocks.size() > keep) {
    release(s.blocks.back());
    s.blocks.pop_back();
  }
  s.len = n;
}

int64_t KVCache::length(int32_t seq) const {
  check_seq(seq, "length");
  return seqs_[size_t(seq)].len - P_;
}

bool KVCache::live(int32_t seq) const { return seq >= 0 && size_t(seq) < seqs_.size() && seqs_[size_t(seq)].live; }

int32_t KVCache::n_live() const {
  int32_t n = 0;
  for (const auto& s : seqs_) n += s.live;
  return n;
}

int64_t KVCache::rewind_need(int32_t seq, int64_t keep, int64_t n) const {
  check_seq(seq, "extend");
  const Seq& s = seqs_[size_t(seq)];
  if (keep < 0 || keep + P_ > s.len)
    fail("KV cache: sequence ", seq, " has ", s.len - P_, " positions, cannot keep ", keep);
  keep += P_;  // cache positions from here
  const int64_t held = (keep + bs_ - 1) / bs_;
  int64_t freed = 0;
  for (size_t b = size_t(held); b < s.blocks.size(); ++b) freed += refs_[size_t(s.blocks[b])] == 1;
  if (n <= 0) return -freed;
  const bool cow = keep % bs_ != 0 && refs_[size_t(s.blocks[size_t(keep / bs_)])] > 1;
  return (keep + n + bs_ - 1) / bs_ - held + (cow ? 1 : 0) - freed;
}

void KVCache::extend(int32_t seq, int64_t n) {
  check_seq(seq, "extend");
  const int64_t need = rewind_need(seq, seqs_[size_t(seq)].len - P_, n);
  if (need > free_blocks())
    fail("KV cache full: sequence ", seq, " needs ", need, " more blocks of ", bs_, " positions, ", free_blocks(),
         " of ", n_blocks_, " are free (raise the context size or the number of KV blocks)");
  if (n <= 0) return;
  Seq& s = seqs_[size_t(seq)];
  if (s.len % bs_ != 0) {
    int32_t& b = s.blocks[size_t(s.len / bs_)];
    if (refs_[size_t(b)] > 1) {
      const int32_t copy = take_block();
      copy_block(copy, b);
      release(b);
      b = copy;
    }
  }
  s.len += n;
  while (int64_t(s.blocks.size()) * bs_ < s.len) s.blocks.push_back(take_block());
}

int32_t KVCache::take_block() {
  const int32_t b = free_.back();
  free_.pop_back();
  refs_[size_t(b)] = 1;
  return b;
}

void KVCache::release(int32_t b) {
  if (--refs_[size_t(b)] > 0) return;
  // Keep free_ sorted highest first, so the lowest free id is always taken next.
  free_.insert(std::upper_bound(free_.begin(), free_.end(), b, std::greater<int32_t>()), b);
}

void KVCache::copy_block(int32_t dst, int32_t src) {
  const size_t blk = size_t(bs_) * row_bytes();
  for (int64_t l = 0; l < n_layers_; ++l) {
    std::memcpy(k(l) + size_t(dst) * blk, k(l) + size_t(src) * blk, blk);
    if (!v_in_k()) std::memcpy(v(l) + size_t(dst) * blk, v(l) + size_t(src) * blk, blk);
  }
  std::copy_n(tok_.begin() + ptrdiff_t(src) * bs_, bs_, tok_.begin() + ptrdiff_t(dst) * bs_);
  if (hidden_ > 0)
    std::copy_n(hid_.begin() + ptrdiff_t(src * bs_ * hidden_), bs_ * hidden_, hid_.begin() + ptrdiff_t(dst * bs_ * hidden_));
}

}  // namespace tessera
