// The serving scheduler: continuous batching over one paged KV pool.
//
// Requests are queued by any thread (submit) and run by one engine thread.
// Every step is ONE Model::forward over a Batch holding the next token of every
// decoding sequence plus chunks of pending prompts, up to step_tokens rows
// (chunked prefill: a long prompt does not stall the streams already running).
// Sequences join and leave at any step. Each admitted sequence reserves the KV
// blocks its longest possible run needs (prompt + max tokens, at most
// ctx_size), so the pool is never over-committed and a running sequence never
// fails for want of memory; requests that do not fit wait in a bounded queue.
//
// Prefix caching: full KV blocks are indexed by a hash chain of their token
// prefix. A new prompt reuses the longest cached prefix (sequences still
// running share full blocks; finished ones are kept until their blocks are
// needed, least recently used first, and also share a partly filled block,
// copied on the first write) through KVCache::fork + truncate.
//
// Events (text, per-token log-probabilities, the end) go to a Stream the client
// thread reads; a cancelled Stream (the client went away) frees its sequence at
// the next step.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "infer/generate.h"
#include "model/batch.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "serve/metrics.h"

namespace tessera::serve {

struct EngineOptions {
  int32_t parallel = 4;       // sequences running at once
  int64_t ctx_size = 2048;    // positions per sequence: prompt + generated
  int64_t kv_blocks = 0;      // blocks in the pool; 0: parallel full contexts
  int64_t step_tokens = 256;  // rows per step: decode tokens + prompt chunks (> parallel)
  int64_t max_queue = 64;     // waiting requests; submit() refuses more (QueueFull)
  bool prefix_cache = true;
  int32_t cache_seqs = 0;     // finished sequences kept for prefix reuse; 0: 2 * parallel
};

// One update of a request. text is new output (stop strings held back until
// ruled out); logprobs holds the tokens generated since the previous event
// when the request asked for them. The last event has done set.
struct Event {
  int32_t index = 0;  // the Request's index (choices of one HTTP request share a Stream)
  std::string text;
  std::vector<TokenLogprob> logprobs;
  bool done = false;
  std::string finish_reason;  // done: "stop" (end of generation or a stop string), "length", "error"
  std::string error;          // finish_reason "error": what went wrong
  int64_t n_prompt = 0, n_generated = 0, n_cached = 0;  // done: prompt tokens, generated tokens, prompt tokens reused
};

class Stream {
 public:
  // Waits up to timeout for events and moves all pending ones into out (false: none came).
  bool wait(std::vector<Event>& out, std::chrono::milliseconds timeout);
  // The client is gone: the engine drops the request at its next step.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }
  void push(Event e);

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<Event> q_;
  std::atomic<bool> cancelled_{false};
};

struct Request {
  int32_t index = 0;            // copied into its events
  std::vector<int32_t> prompt;  // token ids, non-empty
  GenerateParams params;        // n_predict (< 0: until the context is full), stop, sampling, logprobs
  std::shared_ptr<const Grammar> grammar;  // constrained output, or null
};

// submit() when the queue is full (HTTP 429).
struct QueueFull : Error {
  using Error::Error;
};

class Engine {
 public:
  // Sizes the pool and starts the engine thread. Error on inconsistent options.
  Engine(Model& model, KernelContext& ctx, const Tokenizer& tok, const EngineOptions& opt);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues requests (all or none) whose events all go to the returned Stream.
  // Error (a client's mistake: naming the value) when one can never run: an
  // empty prompt, a prompt that fills the context, one needing more KV blocks
  // than the pool has; QueueFull when they would pass max_queue waiting.
  std::shared_ptr<Stream> submit(std::vector<Request> rs);

  // Ends every request (finish_reason "error": the server is shutting down) and
  // stops the engine thread; submit() refuses afterwards. The destructor calls it.
  void shutdown();

  const EngineOptions& options() const { return opt_; }
  Metrics& metrics() { return metrics_; }
  // Current gauges, for /metrics.
  struct Gauges {
    int64_t running = 0, queued = 0, kv_blocks_used = 0, kv_blocks_free = 0, kv_blocks_total = 0, cached_seqs = 0;
    int64_t kv_window_blocks = 0, kv_window = 0;  // sliding-window layers' ring pool (model/kv_cache.h), 0: none
  };
  Gauges gauges() const;

 private:
  struct Seq;
  struct Pending {
    Request req;
    std::shared_ptr<Stream> stream;
    std::chrono::steady_clock::time_point t_submit;
  };
  void loop();
  void admit();   // moves queued requests into running_ while the pool allows
  void step();    // one batched forward and the sampling after it
  void finish(Seq& s, const std::string& reason, const std::string& error = {});
  void retire(std::unique_ptr<Seq> s);  // frees or caches a finished sequence's KV
  void flush_done();                     // sends the final events finish() collected
  int64_t blocks_for(int64_t positions) const { return (positions + bs_ - 1) / bs_; }
  // Prefix cache.
  struct Match {
    int32_t seq = -1;
    int64_t len = 0;
  };
  Match find_prefix(const std::vector<int32_t>& prompt) const;
  void index_blocks(int32_t seq, const std::vector<int32_t>& kv_tokens, int64_t from_len, int64_t to_len);
  void unindex(int32_t seq);
  bool evict_one();  // drops the least recently used cached sequence; false: none
  void publish_gauges();

  Model& model_;
  KernelContext& ctx_;
  const Tokenizer& tok_;
  EngineOptions opt_;
  int64_t bs_ = 32;
  KVCache cache_;
  std::unique_ptr<TokenTrie> trie_;  // built at the first grammar request
  Metrics metrics_;

  // Shared with submitting threads (under mu_).
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> queue_;
  bool stop_ = false;
  Gauges gauges_;

  // Engine thread only.
  std::vector<std::unique_ptr<Seq>> running_;
  int64_t reserved_ = 0;  // blocks the running sequences may still take from the pool
  struct Cached {
    int32_t seq;
    std::vector<int32_t> kv_tokens;
  };
  std::list<Cached> cached_;  // finished sequences, most recently used first
  std::unordered_map<uint64_t, std::vector<int32_t>> index_;  // prefix hash of a full block -> sequences holding it
  std::vector<std::vector<uint64_t>> seq_hashes_;            // per sequence id: the hashes it registered
  std::vector<const std::vector<int32_t>*> seq_tokens_;      // per sequence id: its KV tokens (running or cached)
  Batch batch_;
  std::vector<Seq*> row_seq_;  // logits row -> sequence
  std::vector<std::pair<Seq*, int64_t>> step_rows_;  // per step: sequence, rows it adds (reused, no allocation)
  std::vector<std::pair<std::shared_ptr<Stream>, Event>> done_;  // final events of this step
  std::vector<float> logits_;  // (parallel, V)
  std::vector<float> work_;    // (V) the sampler's copy of a row
  std::vector<uint8_t> allowed_;  // (V) grammar mask
  std::thread thread_;
};

}  // namespace tessera::serve
