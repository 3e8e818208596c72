// Paged KV cache: keys and values of many sequences in fixed-size blocks of
// positions drawn from one pool sized once. Each sequence has a block table
// (its positions [b * block_size, (b + 1) * block_size) live in pool block
// table[b]); blocks are reference-counted, so fork() shares a prefix and the
// first write into a shared block copies it (copy-on-write). truncate() drops
// positions from the end (rejected speculative tokens, a rewound prompt).
//
// Storage, per layer: K then V, each (n_blocks * block_size, kv_dim) rows of
// f32, f16 or Q8_0 blocks (row_bytes() each); K only when the model reads its
// values from the key rows (MLA's latent: ModelConfig::cache_v_in_k, v(l) == k(l)). A free block is always taken
// lowest id first, so a sequence that grows alone gets consecutive blocks: its
// keys are one contiguous range and the attention kernels read them as one array.
//
// Sliding-window layers (AttnKind::SlidingWindow, window W; also dilated windows
// without global or random keys: LayerConfig::kv_window) may keep only the
// positions a query can still see, in a second, smaller pool (the window pool:
// KVCacheOptions::window_seqs): each sequence has a second block table for those
// layers, and extend() hands back its blocks wholly before the earliest key the
// new positions' queries read (less `rewind` positions kept for rewinds), so the
// freed block is taken again for the newest positions: a ring over blocks, O(W)
// memory per layer. Released entries of that table are -1; the attention reads
// only keys from LayerConfig::first_key on, which are always held.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "core/aligned.h"
#include "core/dtype.h"
#include "model/config.h"

namespace tessera {

struct KVCacheOptions {
  int64_t n_blocks = 0;     // blocks in the pool
  int64_t block_size = 32;  // positions per block
  DType type = DType::F32;  // F32, F16 or Q8_0 (rows of kv_dim in llama.cpp's 34-byte blocks of 32)
  // Drafting with a multi-token prediction module (Model, RunOptions::mtp_draft): K/V layers
  // after the model's (the module's block), and each position's final hidden state (f32, this wide).
  int64_t extra_layers = 0;
  int64_t hidden = 0;
  // A prefix adapter (model/model.h KvPrefix): every sequence starts with these positions, held
  // in blocks taken once (the caller writes them: prefix_row) and shared by every sequence. The
  // sequence API (length, truncate, extend, rewind_need) then counts the positions after them.
  int64_t prefix_len = 0;
  // The window pool for sliding-window layers (above): room for window_seqs sequences
  // live at once, each adding at most window_rows positions per extend() and rewound
  // (truncate) by at most `rewind` positions; then the pool never runs out. 0: no
  // window pool (sliding layers keep every position, in the main pool). Also none when
  // it would not be smaller than the main pool, with a prefix, or without sliding layers.
  int64_t window_seqs = 0;
  int64_t window_rows = 0;
  int64_t rewind = 0;
};

class KVCache {
 public:
  // Throws Error when the sizes are not positive or the pool does not fit in memory.
  KVCache(const ModelConfig& cfg, const KVCacheOptions& opt);
  // The bytes of keys and values such a cache holds (without token ids and hidden states).
  static double planned_bytes(const ModelConfig& cfg, const KVCacheOptions& opt);
  // Blocks of the window pool opt asks for (0: none), and the window it keeps (*window).
  static int64_t window_pool_blocks(const ModelConfig& cfg, const KVCacheOptions& opt, int64_t* window);

  // Sequences. Ids are small integers, reused after free_seq.
  int32_t add_seq();
  void free_seq(int32_t seq);
  // A new sequence sharing src's positions (and blocks) as they are now.
  int32_t fork(int32_t src);
  // Keeps positions [0, n) of seq (n <= its length); blocks past them are released.
  // Throws Error when can_keep(seq, n) is false.
  void truncate(int32_t seq, int64_t n);
  // Whether truncate(seq, n) keeps what a query at position n reads: always, but with
  // a window pool whose blocks before n's window were handed back (more than `rewind`
  // positions back); n == 0 always.
  bool can_keep(int32_t seq, int64_t n) const;
  int64_t length(int32_t seq) const;
  bool live(int32_t seq) const;
  int32_t n_live() const;

  // Makes positions [length, length + n) of seq writable (allocating blocks and
  // copying a shared block about to be written) and sets its length to
  // length + n. Throws Error, changing nothing, when the pool runs out.
  void extend(int32_t seq, int64_t n);
  // Net blocks truncate(seq, keep) then extend(seq, n) would take from the pool:
  // those taken less those the truncation frees (blocks no other sequence holds).
  // keep = length(seq): what extend(seq, n) alone takes. Lets a caller check a
  // whole batch before changing anything.
  int64_t rewind_need(int32_t seq, int64_t keep, int64_t n) const;
  // The same for the window pool (0 without one).
  int64_t window_need(int32_t seq, int64_t keep, int64_t n) const;

  // Positions in the calls below (row, token, hidden, block_table) are the cache's own: a
  // prefix's first (a sequence position p is cache position prefix_len() + p).
  int64_t prefix_len() const { return P_; }
  int64_t prefix_row(int64_t p) const { return int64_t(prefix_blocks_[size_t(p / bs_)]) * bs_ + p % bs_; }
  // Row of cache position pos of seq in the main pool (block_table[pos / bs] * bs + pos % bs).
  int64_t row(int32_t seq, int64_t pos) const {
    const auto& t = seqs_[size_t(seq)].blocks;
    return int64_t(t[size_t(pos / bs_)]) * bs_ + pos % bs_;
  }
  // The same in the pool of layer l (the window pool for a windowed layer).
  int64_t row(int32_t seq, int64_t pos, int64_t l) const {
    return int64_t(block_table(seq, l)[pos / bs_]) * bs_ + pos % bs_;
  }
  // The token id at each cached position (hash routing by the previous token:
  // model/moe_hash.h); written by Model::forward with the position's K/V.
  int32_t token(int32_t seq, int64_t pos) const { return tok_[size_t(row(seq, pos))]; }
  void set_token(int32_t seq, int64_t pos, int32_t t) { tok_[size_t(row(seq, pos))] = t; }
  // The final hidden state (KVCacheOptions::hidden floats) kept for position pos of seq; null without.
  float* hidden(int32_t seq, int64_t pos) {
    return hid_.empty() ? nullptr : hid_.data() + size_t(row(seq, pos)) * size_t(hidden_);
  }
  bool has_hidden() const { return !hid_.empty(); }
  int64_t n_layers() const { return n_layers_; }  // K/V layers (the model's, then extra_layers)
  // The block table layer l reads (the window pool's for a windowed layer).
  const int32_t* block_table(int32_t seq, int64_t l) const {
    const Seq& s = seqs_[size_t(seq)];
    return windowed(l) ? s.wblocks.data() : s.blocks.data();
  }
  // Keys (then values) of layer l: (rows(l), kv_dim) elements, row_bytes() per row.
  uint8_t* k(int64_t l) { return data_.data() + layer_off_[size_t(l)]; }
  uint8_t* v(int64_t l) { return k(l) + (n_kv_ - 1) * layer_bytes(l); }
  const uint8_t* k(int64_t l) const { return data_.data() + layer_off_[size_t(l)]; }
  const uint8_t* v(int64_t l) const { return k(l) + (n_kv_ - 1) * layer_bytes(l); }
  bool v_in_k() const { return n_kv_ == 1; }
  // Rows in layer l's pool.
  int64_t rows(int64_t l) const { return (windowed(l) ? wn_blocks_ : n_blocks_) * bs_; }
  // Whether layer l keeps its keys in the window pool; its window.
  bool windowed(int64_t l) const { return window_ > 0 && win_layer_[size_t(l)]; }
  int64_t window() const { return window_; }  // 0: no window pool
  int64_t window_blocks() const { return wn_blocks_; }
  int64_t window_free_blocks() const { return int64_t(win_.free.size()); }

  int64_t block_size() const { return bs_; }
  int64_t n_blocks() const { return n_blocks_; }
  int64_t free_blocks() const { return int64_t(main_.free.size()); }
  int64_t kv_dim() const { return kv_dim_; }
  DType type() const { return type_; }
  size_t row_bytes() const { return dtype_row_bytes(type_, kv_dim_); }
  size_t bytes() const { return data_.size(); }

 private:
  struct Seq {
    std::vector<int32_t> blocks;
    int64_t len = 0;
    bool live = false;
    std::vector<int32_t> wblocks;  // the window pool's table (-1: handed back), with a window pool
  };
  // A pool's block bookkeeping: references per block, free ids highest first.
  struct Pool {
    std::vector<int32_t> refs, free;
    int32_t take();
    void release(int32_t b);
  };
  size_t layer_bytes(int64_t l) const { return size_t(rows(l)) * row_bytes(); }
  void check_seq(int32_t seq, const char* what) const;
  void check_keep(int32_t seq, int64_t n) const;  // Error unless can_keep
  const Seq& checked(int32_t seq, int64_t keep) const;  // seq, after checking it holds keep positions
  // Net blocks of pool p that truncating table t to keep positions, handing back its blocks
  // before block lo, then adding n positions takes (rewind_need / window_need).
  int64_t pool_need(const Pool& p, const std::vector<int32_t>& t, int64_t keep, int64_t n, int64_t lo) const;
  // Copies block src to dst: the layers of the window pool (window) or of the main one.
  void copy_block(int32_t dst, int32_t src, bool window);
  // A table's block holding position len when len is inside it and shared: copied (copy-on-write).
  void unshare_last(std::vector<int32_t>& table, int64_t len, bool window);
  // The first position a sequence extended from `from` must keep for its windowed layers.
  int64_t window_keep_from(int64_t from) const { return std::max<int64_t>(0, from - window_ + 1 - rewind_); }

  int64_t n_layers_, kv_dim_, bs_, n_blocks_;
  size_t n_kv_;  // arrays per layer: 2 (K, V), or 1 (values read from the keys)
  DType type_;
  std::vector<size_t> layer_off_;  // byte offset of each layer's K
  huge_vector<uint8_t> data_;
  std::vector<int32_t> tok_;   // (n_blocks * block_size) token ids, by row
  int64_t hidden_ = 0;
  huge_vector<float> hid_;     // (n_blocks * block_size, hidden_) final hidden states, by row
  Pool main_;  // free ids highest first (the lowest is taken from the back)
  std::vector<Seq> seqs_;
  int64_t window_ = 0, rewind_ = 0, wn_blocks_ = 0;  // the window pool (window_ 0: none)
  std::vector<uint8_t> win_layer_;                   // per layer: in the window pool
  Pool win_;
  int64_t P_ = 0;                      // prefix positions (KVCacheOptions::prefix_len)
  std::vector<int32_t> prefix_blocks_;  // their blocks, one reference held by the cache
};

}  // namespace tessera
