#include "serve/metrics.h"

#include <cstdio>

namespace tessera::serve {

namespace {
std::string num(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.9g", v);
  return b;
}
}  // namespace

void Histogram::observe(double v) {
  std::lock_guard<std::mutex> lk(m_);
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++n_;
}

void Histogram::write(std::string& out, const std::string& name, const std::string& help) const {
  std::lock_guard<std::mutex> lk(m_);
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    out += name + "_bucket{le=\"" + num(bounds_[i]) + "\"} " + std::to_string(cum) + "\n";
  }
  cum += counts_.back();
  out += name + "_bucket{le=\"+Inf\"} " + std::to_string(cum) + "\n";
  out += name + "_sum " + num(sum_) + "\n" + name + "_count " + std::to_string(n_) + "\n";
}

void Metrics::add_tokens(int64_t prompt, int64_t cached, int64_t generated) {
  std::lock_guard<std::mutex> lk(m_);
  prompt_ += prompt, cached_ += cached, generated_ += generated;
}

void Metrics::count_cancelled() {
  std::lock_guard<std::mutex> lk(m_);
  ++cancelled_;
}

void Metrics::count_request(const std::string& endpoint, int status) {
  std::lock_guard<std::mutex> lk(m_);
  ++requests_[{endpoint, status}];
}

std::string Metrics::render(int64_t running, int64_t queued, int64_t kv_used, int64_t kv_free,
                            int64_t cached_seqs) const {
  std::string o;
  const auto counter = [&](const char* name, const char* help, int64_t v) {
    o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n" + name + " " +
         std::to_string(v) + "\n";
  };
  const auto gauge = [&](const char* name, const char* help, double v) {
    o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " gauge\n" + name + " " + num(v) + "\n";
  };
  {
    std::lock_guard<std::mutex> lk(m_);
    o += "# HELP tessera_requests_total HTTP requests by endpoint and status code\n# TYPE tessera_requests_total counter\n";
    for (const auto& [k, v] : requests_)
      o += "tessera_requests_total{endpoint=\"" + k.first + "\",status=\"" + std::to_string(k.second) + "\"} " +
           std::to_string(v) + "\n";
    counter("tessera_prompt_tokens_total", "prompt tokens of finished requests", prompt_);
    counter("tessera_prompt_tokens_cached_total", "prompt tokens taken from the prefix cache", cached_);
    counter("tessera_generated_tokens_total", "generated tokens", generated_);
    counter("tessera_requests_cancelled_total", "requests whose client went away before the answer was complete",
            cancelled_);
    gauge("tessera_prefix_cache_hit_rate", "prompt tokens reused from the prefix cache / prompt tokens",
          prompt_ > 0 ? double(cached_) / double(prompt_) : 0.0);
  }
  ttft.write(o, "tessera_time_to_first_token_seconds", "time from submission to the first generated token");
  itl.write(o, "tessera_inter_token_latency_seconds", "time between consecutive generated tokens of a request");
  gauge("tessera_sequences_running", "sequences being generated", double(running));
  gauge("tessera_sequences_queued", "requests waiting for KV blocks or a free slot", double(queued));
  gauge("tessera_kv_blocks_used", "KV blocks in use (running and prefix-cached sequences)", double(kv_used));
  gauge("tessera_kv_blocks_free", "KV blocks free", double(kv_free));
  gauge("tessera_prefix_cache_sequences", "finished sequences kept for prefix reuse", double(cached_seqs));
  return o;
}

}  // namespace tessera::serve
