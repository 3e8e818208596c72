// Load generator for `tessera serve` (loopback only): C concurrent clients,
// each sending R streaming /v1/completions requests back to back; reports the
// aggregate generated tokens/s and p50 / p99 time to first token and
// inter-token latency, measured at the client from the SSE events as they
// arrive. bench/serve_load.sh starts a server and runs this at 1, 4, 16, 64.
//
//   serve_load --port P [--clients C] [--requests R] [--max-tokens M] [--prompt TEXT]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

struct Result {
  std::vector<double> ttft, itl;
  int64_t tokens = 0;
  int errors = 0;
};

// One streaming request; appends its latencies to r.
void one_request(int port, const std::string& body, Result& r) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ++r.errors;
    close(fd);
    return;
  }
  const std::string req = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          "Connection: close\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  const auto t0 = clock_type::now();
  if (send(fd, req.data(), req.size(), MSG_NOSIGNAL) != ssize_t(req.size())) {
    ++r.errors;
    close(fd);
    return;
  }
  std::string buf;
  size_t scanned = 0;
  auto last = t0;
  bool first = true, done = false;
  char tmp[8192];
  ssize_t n;
  while (!done && (n = recv(fd, tmp, sizeof tmp, 0)) > 0) {
    buf.append(tmp, size_t(n));
    size_t at;
    while ((at = buf.find("data: ", scanned)) != std::string::npos) {
      const size_t end = buf.find("\n\n", at);
      if (end == std::string::npos) break;
      const std::string ev = buf.substr(at + 6, end - at - 6);
      scanned = end + 2;
      if (ev == "[DONE]") {
        done = true;
        break;
      }
      const auto j = nlohmann::json::parse(ev, nullptr, false);
      if (j.is_discarded() || j.contains("error")) {
        ++r.errors;
        continue;
      }
      if (j.contains("usage") && !j["usage"].is_null()) r.tokens += j["usage"]["completion_tokens"].get<int64_t>();
      if (j["choices"].empty() || j["choices"][0]["text"].get<std::string>().empty()) continue;
      const auto now = clock_type::now();
      (first ? r.ttft : r.itl).push_back(std::chrono::duration<double>(now - (first ? t0 : last)).count());
      first = false;
      last = now;
    }
  }
  if (!done) ++r.errors;
  close(fd);
}

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * double(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
  int port = 0, clients = 1, requests = 4, max_tokens = 64;
  std::string prompt = "Once upon a time, in a quiet village by the sea, there lived";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "serve_load: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--port") port = std::atoi(next());
    else if (a == "--clients") clients = std::atoi(next());
    else if (a == "--requests") requests = std::atoi(next());
    else if (a == "--max-tokens") max_tokens = std::atoi(next());
    else if (a == "--prompt") prompt = next();
    else {
      std::fprintf(stderr, "usage: serve_load --port P [--clients C] [--requests R] [--max-tokens M] [--prompt TEXT]\n");
      return 2;
    }
  }
  if (port <= 0 || clients <= 0 || requests <= 0 || max_tokens <= 0) {
    std::fprintf(stderr, "serve_load: --port is required; counts must be positive\n");
    return 2;
  }
  std::vector<Result> res(static_cast<size_t>(clients));
  std::vector<std::thread> ts;
  const auto t0 = clock_type::now();
  for (int c = 0; c < clients; ++c)
    ts.emplace_back([&, c] {
      for (int k = 0; k < requests; ++k) {
        // Distinct prompts per client (no prefix-cache shortcut beyond the shared start), fixed length.
        const nlohmann::json body = {{"prompt", prompt + " client " + std::to_string(c) + " request " + std::to_string(k)},
                                     {"max_tokens", max_tokens}, {"temperature", 0.8}, {"seed", c * 1000 + k},
                                     {"stream", true}, {"stream_options", {{"include_usage", true}}}};
        one_request(port, body.dump(), res[size_t(c)]);
      }
    });
  for (auto& t : ts) t.join();
  const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
  Result all;
  for (auto& r : res) {
    all.ttft.insert(all.ttft.end(), r.ttft.begin(), r.ttft.end());
    all.itl.insert(all.itl.end(), r.itl.begin(), r.itl.end());
    all.tokens += r.tokens;
    all.errors += r.errors;
  }
  std::printf("clients %3d  requests %4d  tokens %6lld  %7.1f tok/s  ttft p50 %7.1f ms p99 %7.1f ms  itl p50 %6.1f ms p99 %6.1f ms  errors %d\n",
              clients, clients * requests, (long long)all.tokens, double(all.tokens) / secs, 1e3 * pct(all.ttft, .5),
              1e3 * pct(all.ttft, .99), 1e3 * pct(all.itl, .5), 1e3 * pct(all.itl, .99), all.errors);
  return all.errors ? 1 : 0;
}
