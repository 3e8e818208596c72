#include "model/kv_cache.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace tessera {

int64_t KVCache::window_pool_blocks(const ModelConfig& cfg, const KVCacheOptions& opt, int64_t* window) {
  // The sliding layers' largest window, and a sequence's ring of blocks: the keys its
  // next queries read, a rewind's, one extend's rows, a partial block at each end.
  int64_t W = 0;
  for (int64_t l = 0; l < cfg.n_layers; ++l) W = std::max(W, cfg.layer(l).kv_window());
  *window = 0;
  if (W <= 0 || opt.window_seqs <= 0 || opt.prefix_len > 0 || opt.block_size <= 0) return 0;
  const int64_t bs = opt.block_size;
  const int64_t ring =
      (W - 1 + std::max<int64_t>(opt.rewind, 0) + std::max<int64_t>(opt.window_rows, 1) + bs - 1) / bs + 1;
  if (opt.window_seqs * ring >= opt.n_blocks) return 0;  // no smaller than the main pool
  *window = W;
  return opt.window_seqs * ring;
}

double KVCache::planned_bytes(const ModelConfig& cfg, const KVCacheOptions& opt) {
  int64_t W = 0;
  const int64_t wn = window_pool_blocks(cfg, opt, &W);
  const double row = double(dtype_row_bytes(opt.type, cfg.cache_kv_dim())) * (cfg.cache_v_in_k() ? 1 : 2);
  double bytes = 0;
  for (int64_t l = 0; l < cfg.n_layers + std::max<int64_t>(opt.extra_layers, 0); ++l) {
    const bool w = W > 0 && l < cfg.n_layers && cfg.layer(l).kv_window() > 0;
    bytes += row * double((w ? wn : opt.n_blocks) * opt.block_size);
  }
  return bytes;
}

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
  win_layer_.assign(size_t(n_layers_), 0);
  for (int64_t l = 0; l < cfg.n_layers; ++l) win_layer_[size_t(l)] = cfg.layer(l).kv_window() > 0;
  wn_blocks_ = window_pool_blocks(cfg, opt, &window_);
  if (window_ > 0) rewind_ = std::max<int64_t>(opt.rewind, 0);
  double bytes = 0;
  for (int64_t l = 0; l < n_layers_; ++l) {
    layer_off_.push_back(size_t(bytes));
    bytes += double(n_kv_) * double(rows(l)) * double(row_bytes());
  }
  require_memory(bytes, "KV cache of " + std::to_string(n_blocks_) + " blocks of " + std::to_string(bs_) +
                            " positions" + (window_ > 0 ? " (" + std::to_string(wn_blocks_) + " for sliding layers)" : ""),
                 "lower -c or the number of KV blocks");
  data_.assign(size_t(bytes), 0);
  main_.refs.assign(size_t(n_blocks_), 0);
  tok_.assign(size_t(n_blocks_ * bs_), -1);
  if (opt.hidden > 0) {
    const double hb = 4.0 * double(n_blocks_) * double(bs_) * double(opt.hidden);
    require_memory(hb, "KV cache hidden states", "lower -c");
    hidden_ = opt.hidden;
    hid_.assign(size_t(n_blocks_ * bs_ * hidden_), 0.f);
  }
  main_.free.resize(size_t(n_blocks_));
  for (int64_t i = 0; i < n_blocks_; ++i) main_.free[size_t(i)] = int32_t(n_blocks_ - 1 - i);
  win_.refs.assign(size_t(wn_blocks_), 0);
  win_.free.resize(size_t(wn_blocks_));
  for (int64_t i = 0; i < wn_blocks_; ++i) win_.free[size_t(i)] = int32_t(wn_blocks_ - 1 - i);
  if (opt.prefix_len > 0) {
    P_ = opt.prefix_len;
    const int64_t nb = (P_ + bs_ - 1) / bs_;
    if (nb >= n_blocks_) fail("KV cache: a prefix of ", P_, " positions fills the pool of ", n_blocks_, " blocks");
    for (int64_t i = 0; i < nb; ++i) prefix_blocks_.push_back(main_.take());
  }
}

void KVCache::check_seq(int32_t seq, const char* what) const {
  if (seq < 0 || size_t(seq) >= seqs_.size() || !seqs_[size_t(seq)].live)
    fail("KV cache ", what, ": sequence ", seq, " does not exist");
}

int32_t KVCache::add_seq() {
  for (size_t i = 0; i < seqs_.size(); ++i)
    if (!seqs_[i].live) {
      seqs_[i] = Seq{prefix_blocks_, P_, true, {}};
      for (int32_t b : prefix_blocks_) ++main_.refs[size_t(b)];
      return int32_t(i);
    }
  seqs_.push_back(Seq{prefix_blocks_, P_, true, {}});
  for (int32_t b : prefix_blocks_) ++main_.refs[size_t(b)];
  return int32_t(seqs_.size() - 1);
}

void KVCache::free_seq(int32_t seq) {
  check_seq(seq, "free");
  Seq& s = seqs_[size_t(seq)];
  for (int32_t b : s.blocks) main_.release(b);
  for (int32_t b : s.wblocks)
    if (b >= 0) win_.release(b);
  s.blocks.clear(), s.wblocks.clear(), s.len = 0, s.live = false;
}

int32_t KVCache::fork(int32_t src) {
  check_seq(src, "fork");
  const int32_t id = add_seq();
  Seq& s = seqs_[size_t(src)];  // after add_seq: seqs_ may have grown
  for (int32_t b : seqs_[size_t(id)].blocks) main_.release(b);  // add_seq's prefix references
  seqs_[size_t(id)].blocks = s.blocks;
  seqs_[size_t(id)].wblocks = s.wblocks;
  seqs_[size_t(id)].len = s.len;
  for (int32_t b : s.blocks) ++main_.refs[size_t(b)];
  for (int32_t b : s.wblocks)
    if (b >= 0) ++win_.refs[size_t(b)];
  return id;
}

void KVCache::truncate(int32_t seq, int64_t n) {
  check_seq(seq, "truncate");
  Seq& s = seqs_[size_t(seq)];
  if (n < 0 || n + P_ > s.len)
    fail("KV cache truncate: sequence ", seq, " has ", s.len - P_, " positions, cannot keep ", n);
  check_keep(seq, n);
  n += P_;  // cache positions from here
  const size_t keep = size_t((n + bs_ - 1) / bs_);
  while (s.blocks.size() > keep) {
    main_.release(s.blocks.back());
    s.blocks.pop_back();
  }
  while (s.wblocks.size() > keep) {
    if (s.wblocks.back() >= 0) win_.release(s.wblocks.back());
    s.wblocks.pop_back();
  }
  s.len = n;
}

void KVCache::check_keep(int32_t seq, int64_t n) const {
  if (!can_keep(seq, n))
    fail("KV cache: sequence ", seq, " cannot go back to position ", n, ": its sliding-window layers (window ", window_,
         ") have handed back the positions before ", n - window_ + 1, " (a rewind keeps the last ", rewind_,
         " positions; start the sequence over from position 0)");
}

bool KVCache::can_keep(int32_t seq, int64_t n) const {
  check_seq(seq, "truncate");
  if (window_ == 0 || n <= 0) return true;
  const Seq& s = seqs_[size_t(seq)];
  const int64_t first = std::max<int64_t>(0, n - window_ + 1);  // the first key a query at n reads
  return size_t(first / bs_) >= s.wblocks.size() || s.wblocks[size_t(first / bs_)] >= 0;
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

const KVCache::Seq& KVCache::checked(int32_t seq, int64_t keep) const {
  check_seq(seq, "extend");
  const Seq& s = seqs_[size_t(seq)];
  if (keep < 0 || keep + P_ > s.len)
    fail("KV cache: sequence ", seq, " has ", s.len - P_, " positions, cannot keep ", keep);
  return s;
}

int64_t KVCache::pool_need(const Pool& p, const std::vector<int32_t>& t, int64_t keep, int64_t n, int64_t lo) const {
  // Handed back: the blocks past the kept positions [0, keep) and those before block lo
  // (-1: already handed back); taken: the new positions' blocks and the copy of a shared
  // partial block about to be written.
  const int64_t held = (keep + bs_ - 1) / bs_;
  int64_t freed = 0;
  for (size_t b = 0; b < t.size(); ++b)
    if (t[b] >= 0 && (int64_t(b) < lo || int64_t(b) >= held)) freed += p.refs[size_t(t[b])] == 1;
  if (n <= 0) return -freed;
  const bool cow = keep % bs_ != 0 && p.refs[size_t(t[size_t(keep / bs_)])] > 1;
  return (keep + n + bs_ - 1) / bs_ - held + (cow ? 1 : 0) - freed;
}

int64_t KVCache::rewind_need(int32_t seq, int64_t keep, int64_t n) const {
  return pool_need(main_, checked(seq, keep).blocks, keep + P_, n, 0);
}

int64_t KVCache::window_need(int32_t seq, int64_t keep, int64_t n) const {
  if (window_ == 0) return 0;
  const Seq& s = checked(seq, keep);
  check_keep(seq, keep);
  // With new positions, the blocks wholly before the first key their queries (or a later rewind) read go too.
  return pool_need(win_, s.wblocks, keep + P_, n, n > 0 ? window_keep_from(keep + P_) / bs_ : 0);
}

void KVCache::extend(int32_t seq, int64_t n) {
  check_seq(seq, "extend");
  const int64_t len = seqs_[size_t(seq)].len;
  const int64_t need = rewind_need(seq, len - P_, n);
  if (need > free_blocks())
    fail("KV cache full: sequence ", seq, " needs ", need, " more blocks of ", bs_, " positions, ", free_blocks(),
         " of ", n_blocks_, " are free (raise the context size or the number of KV blocks)");
  const int64_t wneed = window_need(seq, len - P_, n);
  if (wneed > window_free_blocks())
    fail("KV cache full: sequence ", seq, " needs ", wneed, " more blocks of ", bs_,
         " positions for its sliding-window layers, ", window_free_blocks(), " of ", wn_blocks_,
         " are free (more sequences or rows per step than the cache was made for)");
  if (n <= 0) return;
  Seq& s = seqs_[size_t(seq)];
  unshare_last(s.blocks, s.len, false);
  if (window_ > 0) {
    // Hand back the blocks wholly before what the new queries (or a rewind) read, then
    // copy a shared partial block about to be written, then take the new ones.
    const int64_t lo = window_keep_from(s.len) / bs_;
    for (int64_t b = 0; b < lo && b < int64_t(s.wblocks.size()); ++b)
      if (s.wblocks[size_t(b)] >= 0) win_.release(s.wblocks[size_t(b)]), s.wblocks[size_t(b)] = -1;
    unshare_last(s.wblocks, s.len, true);
  }
  s.len += n;
  while (int64_t(s.blocks.size()) * bs_ < s.len) s.blocks.push_back(main_.take());
  while (window_ > 0 && int64_t(s.wblocks.size()) * bs_ < s.len) s.wblocks.push_back(win_.take());
}

int32_t KVCache::Pool::take() {
  const int32_t b = free.back();
  free.pop_back();
  refs[size_t(b)] = 1;
  return b;
}

void KVCache::Pool::release(int32_t b) {
  if (--refs[size_t(b)] > 0) return;
  // Keep free sorted highest first, so the lowest free id is always taken next.
  free.insert(std::upper_bound(free.begin(), free.end(), b, std::greater<int32_t>()), b);
}

void KVCache::unshare_last(std::vector<int32_t>& table, int64_t len, bool window) {
  if (len % bs_ == 0) return;
  Pool& pool = window ? win_ : main_;
  int32_t& b = table[size_t(len / bs_)];
  if (pool.refs[size_t(b)] <= 1) return;
  const int32_t copy = pool.take();
  copy_block(copy, b, window);
  pool.release(b);
  b = copy;
}

void KVCache::copy_block(int32_t dst, int32_t src, bool window) {
  const size_t blk = size_t(bs_) * row_bytes();
  for (int64_t l = 0; l < n_layers_; ++l) {
    if (windowed(l) != window) continue;  // the layers of the other pool
    std::memcpy(k(l) + size_t(dst) * blk, k(l) + size_t(src) * blk, blk);
    if (!v_in_k()) std::memcpy(v(l) + size_t(dst) * blk, v(l) + size_t(src) * blk, blk);
  }
  if (window) return;  // token ids and hidden states are the main pool's
  std::copy_n(tok_.begin() + ptrdiff_t(src) * bs_, bs_, tok_.begin() + ptrdiff_t(dst) * bs_);
  if (hidden_ > 0)
    std::copy_n(hid_.begin() + ptrdiff_t(src * bs_ * hidden_), bs_ * hidden_, hid_.begin() + ptrdiff_t(dst * bs_ * hidden_));
}

}  // namespace tessera
