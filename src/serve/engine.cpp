#include "serve/engine.h"

#include <algorithm>
#include <optional>

namespace tessera::serve {

using clock = std::chrono::steady_clock;

bool Stream::wait(std::vector<Event>& out, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(m_);
  if (!cv_.wait_for(lk, timeout, [&] { return !q_.empty(); })) return false;
  while (!q_.empty()) {
    out.push_back(std::move(q_.front()));
    q_.pop_front();
  }
  return true;
}

void Stream::push(Event e) {
  {
    std::lock_guard<std::mutex> lk(m_);
    q_.push_back(std::move(e));
  }
  cv_.notify_all();
}

struct Engine::Seq {
  int32_t id = -1;  // the KV cache's sequence
  Request req;
  std::shared_ptr<Stream> stream;
  clock::time_point t_submit, t_last;
  GenerateStats st;  // st.tokens: prompt + generated, the samplers' history
  std::string text;  // output not yet sent
  std::vector<TokenLogprob> lps;
  std::function<void(std::string_view)> on_text = [this](std::string_view t) { text.append(t); };
  std::unique_ptr<TokenEmitter> emit;
  Sampler sampler;
  std::optional<GrammarState> gs;
  std::vector<int32_t> kv_tokens;  // the tokens whose keys and values are in the cache
  int64_t n_cached = 0;            // prompt tokens reused from the prefix cache
  int64_t max_len = 0;             // positions it may reach
  int64_t budget = 0;              // blocks it may still take from the pool
  int32_t last = -1;               // sampled, not yet run
  bool done = false;

  Seq(Request r, int32_t n_vocab) : req(std::move(r)), sampler(req.params.sampling, n_vocab) {}
  int64_t n_prompt() const { return int64_t(req.prompt.size()); }
  bool prefilled() const { return int64_t(kv_tokens.size()) >= n_prompt(); }
};

namespace {
uint64_t hash_block(uint64_t h, const int32_t* t, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {  // FNV-1a over the ids, then a final mix
    h ^= uint64_t(uint32_t(t[i]));
    h *= 0x100000001b3ull;
  }
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ull;
  return h ^ (h >> 32);
}
constexpr uint64_t kHashSeed = 0xcbf29ce484222325ull;
}  // namespace

Engine::Engine(Model& model, KernelContext& ctx, const Tokenizer& tok, const EngineOptions& opt)
    : model_(model), ctx_(ctx), tok_(tok), opt_(opt),
      cache_([&]() -> KVCache {
        if (opt_.parallel < 1) fail("--parallel must be at least 1, got ", opt_.parallel);
        if (opt_.ctx_size < 2) fail("--ctx-size must be at least 2, got ", opt_.ctx_size);
        if (opt_.ctx_size > model.n_ctx())
          fail("--ctx-size ", opt_.ctx_size, " exceeds the model's planned context ", model.n_ctx());
        if (opt_.step_tokens <= opt_.parallel)
          fail("the step budget (", opt_.step_tokens, " tokens) must exceed --parallel (", opt_.parallel, ")");
        const int64_t bs = model.make_cache(1).block_size();
        if (opt_.kv_blocks <= 0) opt_.kv_blocks = int64_t(opt_.parallel) * ((opt_.ctx_size + bs - 1) / bs);
        if (opt_.cache_seqs <= 0) opt_.cache_seqs = 2 * opt_.parallel;
        // Sliding-window layers keep their window only, for every sequence that may be live
        // at once (running, prefix-cached, and the one being forked), each adding at most a
        // step's tokens per forward.
        return model.make_cache(opt_.kv_blocks, opt_.parallel + opt_.cache_seqs + 1, opt_.step_tokens);
      }()) {
  bs_ = cache_.block_size();
  logits_.resize(size_t(opt_.parallel) * size_t(model_.config().vocab_size));
  gauges_.kv_blocks_total = cache_.n_blocks();
  gauges_.kv_window_blocks = cache_.window_blocks(), gauges_.kv_window = cache_.window();
  gauges_.kv_blocks_free = cache_.free_blocks();
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() { shutdown(); }

void Engine::shutdown() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<Stream> Engine::submit(std::vector<Request> rs) {
  const int64_t V = model_.config().vocab_size;
  for (auto& r : rs) {
    const int64_t P = int64_t(r.prompt.size());
    if (P == 0) fail("the prompt has no tokens");
    if (P >= opt_.ctx_size)
      fail("the prompt has ", P, " tokens; the context holds ", opt_.ctx_size,
           " positions per sequence (the server's --ctx-size), including at least one generated token");
    for (int32_t t : r.prompt)
      if (t < 0 || t >= V) fail("prompt token id ", t, " is outside the vocabulary [0, ", V, ")");
    r.params.sampling.validate();
    const int64_t n = r.params.n_predict;
    const int64_t max_len = n < 0 ? opt_.ctx_size : std::min(opt_.ctx_size, P + n);
    if (blocks_for(cache_.prefix_len() + max_len) > cache_.n_blocks())
      fail("the request needs ", blocks_for(cache_.prefix_len() + max_len), " KV blocks (", max_len, " positions) but the pool has ",
           cache_.n_blocks(), " (the server's --kv-blocks)");
  }
  auto stream = std::make_shared<Stream>();
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stop_) fail("the server is shutting down");
    if (int64_t(queue_.size() + rs.size()) > opt_.max_queue)
      throw QueueFull("the server is busy: " + std::to_string(queue_.size()) + " requests are waiting (--max-queue " +
                      std::to_string(opt_.max_queue) + ")");
    for (auto& r : rs) queue_.push_back(Pending{std::move(r), stream, clock::now()});
    gauges_.queued = int64_t(queue_.size());
  }
  cv_.notify_all();
  return stream;
}

Engine::Gauges Engine::gauges() const {
  std::lock_guard<std::mutex> lk(mu_);
  return gauges_;
}

void Engine::publish_gauges() {
  std::lock_guard<std::mutex> lk(mu_);
  gauges_.running = int64_t(running_.size());
  gauges_.queued = int64_t(queue_.size());
  gauges_.kv_blocks_free = cache_.free_blocks();
  gauges_.kv_blocks_used = cache_.n_blocks() - cache_.free_blocks();
  gauges_.cached_seqs = int64_t(cached_.size());
}

void Engine::loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !queue_.empty() || !running_.empty(); });
      if (stop_) break;
    }
    admit();
    if (running_.empty()) {  // only cancelled requests were waiting
      publish_gauges();
      continue;
    }
    step();
    publish_gauges();
    flush_done();
  }
  for (auto& s : running_) finish(*s, "error", "the server is shutting down");
  flush_done();
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& p : queue_) {
    Event e;
    e.index = p.req.index;
    e.done = true, e.finish_reason = "error", e.error = "the server is shutting down";
    p.stream->push(std::move(e));
  }
  queue_.clear();
}

Engine::Match Engine::find_prefix(const std::vector<int32_t>& prompt) const {
  Match best;
  const int64_t limit = int64_t(prompt.size()) - 1;  // at least one prompt token runs, for its logits
  uint64_t h = kHashSeed;
  std::vector<int32_t> cands;
  for (int64_t b = 0; (b + 1) * bs_ <= limit; ++b) {
    h = hash_block(h, prompt.data() + b * bs_, bs_);
    auto it = index_.find(h);
    if (it == index_.end()) break;
    std::vector<int32_t> next;
    for (int32_t s : it->second) {
      const auto* t = seq_tokens_[size_t(s)];
      if (t && int64_t(t->size()) >= (b + 1) * bs_ && std::equal(prompt.begin(), prompt.begin() + (b + 1) * bs_, t->begin()))
        next.push_back(s);
    }
    if (next.empty()) break;
    cands.swap(next);
    best.len = (b + 1) * bs_;
  }
  if (cands.empty()) return Match{};
  // Full blocks are shared with any holder; a finished sequence also lends the
  // partly matching block after them (copied at the first write).
  const int64_t full = best.len;
  for (int32_t s : cands) {
    int64_t m = full;
    const bool is_cached = std::any_of(cached_.begin(), cached_.end(), [&](const Cached& c) { return c.seq == s; });
    if (is_cached) {
      const auto& t = *seq_tokens_[size_t(s)];
      const int64_t end = std::min<int64_t>(limit, int64_t(t.size()));
      while (m < end && t[size_t(m)] == prompt[size_t(m)]) ++m;
    }
    if (!cache_.can_keep(s, m)) continue;  // its sliding-window layers moved on past m
    if (best.seq < 0 || m > best.len) best.seq = s, best.len = m;
  }
  return best.seq >= 0 ? best : Match{};  // (none: every holder's ring had moved on)
}

void Engine::index_blocks(int32_t seq, const std::vector<int32_t>& t, int64_t from_len, int64_t to_len) {
  if (!opt_.prefix_cache) return;
  if (size_t(seq) >= seq_hashes_.size()) seq_hashes_.resize(size_t(seq) + 1);
  auto& hs = seq_hashes_[size_t(seq)];
  (void)from_len;  // every full block not yet registered
  for (int64_t b = int64_t(hs.size()); (b + 1) * bs_ <= to_len; ++b) {
    const uint64_t h = hash_block(b == 0 ? kHashSeed : hs.back(), t.data() + b * bs_, bs_);
    hs.push_back(h);
    index_[h].push_back(seq);
  }
}

void Engine::unindex(int32_t seq) {
  if (size_t(seq) < seq_tokens_.size()) seq_tokens_[size_t(seq)] = nullptr;
  if (size_t(seq) >= seq_hashes_.size()) return;
  for (uint64_t h : seq_hashes_[size_t(seq)]) {
    auto it = index_.find(h);
    if (it == index_.end()) continue;
    auto& v = it->second;
    v.erase(std::remove(v.begin(), v.end(), seq), v.end());
    if (v.empty()) index_.erase(it);
  }
  seq_hashes_[size_t(seq)].clear();
}

bool Engine::evict_one() {
  if (cached_.empty()) return false;
  const int32_t s = cached_.back().seq;
  unindex(s);
  cache_.free_seq(s);
  cached_.pop_back();
  return true;
}

void Engine::admit() {
  const int32_t V = int32_t(model_.config().vocab_size);
  for (;;) {
    std::unique_lock<std::mutex> lk(mu_);
    while (!queue_.empty() && queue_.front().stream->cancelled()) queue_.pop_front();
    if (queue_.empty() || int64_t(running_.size()) >= opt_.parallel) return;
    Pending& p = queue_.front();
    const int64_t P = int64_t(p.req.prompt.size());
    const int64_t n = p.req.params.n_predict;
    const int64_t max_len = n < 0 ? opt_.ctx_size : std::min(opt_.ctx_size, P + n);
    Match m = opt_.prefix_cache ? find_prefix(p.req.prompt) : Match{};
    int32_t id;
    if (m.seq >= 0) {
      id = cache_.fork(m.seq);
      cache_.truncate(id, m.len);
      for (auto it = cached_.begin(); it != cached_.end(); ++it)  // the source is used: most recent now
        if (it->seq == m.seq) {
          cached_.splice(cached_.begin(), cached_, it);
          break;
        }
    } else {
      id = cache_.add_seq();
    }
    // Blocks it will take: its positions' blocks less the full ones it shares (a prefix adapter's
    // rows come first in every sequence: KVCache::prefix_len), plus the copy of a shared partial one.
    const int64_t pre = cache_.prefix_len();
    const int64_t need = blocks_for(pre + max_len) - (pre + m.len) / bs_ + (pre > 0 ? 1 : 0);
    while (cache_.free_blocks() - reserved_ < need && evict_one()) {
    }
    if (cache_.free_blocks() - reserved_ < need) {  // wait for running sequences to finish
      cache_.free_seq(id);
      return;
    }
    auto s = std::make_unique<Seq>(std::move(p.req), V);
    s->id = id;
    s->stream = std::move(p.stream);
    s->t_submit = p.t_submit;
    queue_.pop_front();
    lk.unlock();

    s->max_len = max_len;
    s->budget = need;
    reserved_ += need;
    s->n_cached = m.len;
    s->st.n_prompt = s->n_prompt();
    s->st.tokens = s->req.prompt;
    s->emit = std::make_unique<TokenEmitter>(tok_, s->req.params, s->st, s->on_text);
    if (s->req.grammar) {
      if (!trie_) trie_ = std::make_unique<TokenTrie>(tok_);
      s->req.params.grammar = s->req.grammar.get();
      s->req.params.trie = trie_.get();
      s->gs.emplace(*s->req.grammar);
    }
    s->kv_tokens.assign(s->req.prompt.begin(), s->req.prompt.begin() + m.len);
    if (size_t(id) >= seq_tokens_.size()) seq_tokens_.resize(size_t(id) + 1, nullptr);
    seq_tokens_[size_t(id)] = &s->kv_tokens;
    if (m.len > 0) {  // the shared full blocks: the same hashes
      if (size_t(id) >= seq_hashes_.size()) seq_hashes_.resize(size_t(id) + 1);
      const auto& src = seq_hashes_[size_t(m.seq)];
      seq_hashes_[size_t(id)].assign(src.begin(), src.begin() + m.len / bs_);
      for (uint64_t h : seq_hashes_[size_t(id)]) index_[h].push_back(id);
    }
    running_.push_back(std::move(s));
  }
}

void Engine::finish(Seq& s, const std::string& reason, const std::string& error) {
  if (s.done) return;
  s.done = true;
  Event e;
  e.index = s.req.index;
  if (reason != "error") s.emit->finish();
  e.text = std::move(s.text);
  e.logprobs = std::move(s.lps);
  e.done = true;
  e.finish_reason = reason;
  e.error = error;
  e.n_prompt = s.n_prompt(), e.n_generated = s.st.n_generated, e.n_cached = s.n_cached;
  metrics_.add_tokens(e.n_prompt, e.n_cached, e.n_generated);
  done_.emplace_back(s.stream, std::move(e));  // sent after the sequence is retired and the gauges say so
}

void Engine::flush_done() {
  for (auto& [stream, e] : done_) stream->push(std::move(e));
  done_.clear();
}

void Engine::retire(std::unique_ptr<Seq> s) {
  reserved_ -= s->budget;
  if (!opt_.prefix_cache || s->kv_tokens.empty()) {
    unindex(s->id);
    cache_.free_seq(s->id);
    return;
  }
  // Cache the KV as it is: its positions hold exactly kv_tokens.
  cache_.truncate(s->id, int64_t(s->kv_tokens.size()));
  cached_.push_front(Cached{s->id, std::move(s->kv_tokens)});
  seq_tokens_[size_t(s->id)] = &cached_.front().kv_tokens;
  while (int64_t(cached_.size()) > opt_.cache_seqs) evict_one();
}

void Engine::step() {
  // Drop the requests whose clients left.
  for (auto& s : running_)
    if (s->stream->cancelled()) finish(*s, "error", "cancelled");
  // The batch: every decoding sequence's next token, then prompt chunks.
  batch_.clear();
  row_seq_.clear();
  int64_t room = opt_.step_tokens;
  auto& rows = step_rows_;  // sequence, rows it adds
  rows.clear();
  for (auto& s : running_)
    if (!s->done && s->prefilled()) {
      batch_.add(s->last, int64_t(s->kv_tokens.size()), s->id, true);
      row_seq_.push_back(s.get());
      rows.emplace_back(s.get(), 1);
      --room;
    }
  for (auto& s : running_) {
    if (s->done || s->prefilled() || room <= 0) continue;
    const int64_t from = int64_t(s->kv_tokens.size());
    const int64_t take = std::min(s->n_prompt() - from, room);
    for (int64_t i = from; i < from + take; ++i) {
      const bool last = i == s->n_prompt() - 1;
      batch_.add(s->req.prompt[size_t(i)], i, s->id, last);
      if (last) row_seq_.push_back(s.get());
    }
    rows.emplace_back(s.get(), take);
    room -= take;
  }
  if (batch_.size() > 0) {
    for (auto& [s, n] : rows) {
      const int64_t net = cache_.rewind_need(s->id, int64_t(s->kv_tokens.size()), n);
      s->budget -= net;
      reserved_ -= net;
    }
    bool ran = true;
    try {
      model_.forward(ctx_, batch_, cache_, logits_.data());
    } catch (const std::exception& e) {
      for (auto& [s, n] : rows) finish(*s, "error", e.what());
      row_seq_.clear();
      ran = false;
    }
    if (ran)
      for (auto& [s, n] : rows) {
        const int64_t from = int64_t(s->kv_tokens.size());
        if (s->prefilled())
          s->kv_tokens.push_back(s->last);
        else
          s->kv_tokens.insert(s->kv_tokens.end(), s->req.prompt.begin() + from, s->req.prompt.begin() + from + n);
        index_blocks(s->id, s->kv_tokens, from, int64_t(s->kv_tokens.size()));
      }
  }
  // Sampling, in row order.
  const int64_t V = model_.config().vocab_size;
  work_.resize(size_t(V));
  for (size_t r = 0; r < row_seq_.size(); ++r) {
    Seq& s = *row_seq_[r];
    const float* raw = logits_.data() + r * size_t(V);
    try {
      std::copy(raw, raw + V, work_.begin());
      int32_t id = s.sampler.sample(work_.data(), s.st.tokens);
      if (s.gs)
        id = constrain_sample(s.sampler, *s.gs, *trie_, tok_, id, raw, work_, allowed_, s.st.tokens, s.req.prompt.size());
      const bool end = tok_.is_eog(id) || id == tok_.bos_id();
      if (s.req.params.logprobs >= 0 && !end) s.lps.push_back(token_logprob(raw, V, id, s.req.params.logprobs));
      const auto now = clock::now();
      if (s.st.n_generated == 0)
        metrics_.ttft.observe(std::chrono::duration<double>(now - s.t_submit).count());
      else
        metrics_.itl.observe(std::chrono::duration<double>(now - s.t_last).count());
      s.t_last = now;
      s.last = id;
      if (!s.emit->push(id)) {
        const std::string& why = s.st.stop_reason;
        finish(s, why == "length" ? "length" : "stop");
      } else if (int64_t(s.kv_tokens.size()) >= s.max_len) {
        finish(s, "length");
      } else if (!s.text.empty() || !s.lps.empty()) {
        Event e;
        e.index = s.req.index;
        e.text = std::move(s.text);
        e.logprobs = std::move(s.lps);
        s.text.clear(), s.lps.clear();
        s.stream->push(std::move(e));
      }
    } catch (const std::exception& e) {
      finish(s, "error", e.what());
    }
  }
  // Retire the finished sequences.
  for (size_t i = 0; i < running_.size();) {
    if (running_[i]->done) {
      retire(std::move(running_[i]));
      running_.erase(running_.begin() + std::ptrdiff_t(i));
    } else {
      ++i;
    }
  }
}

}  // namespace tessera::serve
