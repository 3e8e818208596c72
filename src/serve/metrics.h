// Server metrics in Prometheus' text exposition format: counters and
// cumulative histograms, updated from any thread.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace tessera::serve {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}
  void observe(double v);
  // "# TYPE name histogram" and its _bucket / _sum / _count lines.
  void write(std::string& out, const std::string& name, const std::string& help) const;

 private:
  mutable std::mutex m_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative); the last is +Inf
  double sum_ = 0;
  uint64_t n_ = 0;
};

struct Metrics {
  Histogram ttft{{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};          // seconds
  Histogram itl{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}};       // seconds
  void add_tokens(int64_t prompt, int64_t cached, int64_t generated);
  void count_request(const std::string& endpoint, int status);
  // A request whose client went away before its answer was complete (its sequences are freed).
  void count_cancelled();
  // Every metric, with the gauges given.
  std::string render(int64_t running, int64_t queued, int64_t kv_used, int64_t kv_free, int64_t cached_seqs) const;

 private:
  mutable std::mutex m_;
  int64_t prompt_ = 0, cached_ = 0, generated_ = 0, cancelled_ = 0;
  std::map<std::pair<std::string, int>, int64_t> requests_;
};

}  // namespace tessera::serve
