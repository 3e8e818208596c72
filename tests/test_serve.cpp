// tessera serve, driven over loopback by real HTTP clients (cpp-httplib's
// client, curl, raw sockets): every endpoint, streaming and not, batching
// equivalence, prefix caching, bad input, disconnects.
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <random>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli_util.h"
#include "formats/load.h"
#include "formats/lora_adapter.h"
#include "server_util.h"

namespace tessera::test {
namespace {

using json = nlohmann::json;

const char* kModel = "models/stories260K.bin";
const char* kTok = "models/tok512.bin";

std::vector<std::string> args(std::vector<std::string> extra = {}) {
  std::vector<std::string> a = {"-m", shared_path(kModel), "--tokenizer", shared_path(kTok)};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

struct Reply {
  int status = 0;
  json body;
  std::string raw;
};

// Status 0 when the request got no response.
Reply reply_of(const httplib::Result& r) {
  Reply out;
  if (!r) return out;
  out.status = r->status;
  out.raw = r->body;
  out.body = json::parse(r->body, nullptr, false);
  return out;
}

Reply post(int port, const std::string& path, const std::string& body, const httplib::Headers& h = {}) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(120, 0);
  return reply_of(c.Post(path, h, body, "application/json"));
}
Reply post(int port, const std::string& path, const json& body) { return post(port, path, body.dump()); }

Reply get(int port, const std::string& path, const httplib::Headers& h = {}) {
  httplib::Client c("127.0.0.1", port);
  return reply_of(c.Get(path, h));
}

std::string completion_text(int port, const json& body) {
  const Reply r = post(port, "/v1/completions", body);
  EXPECT_EQ(r.status, 200) << r.raw;
  if (r.status != 200) return "<error>";
  return r.body["choices"][0]["text"];
}

// A gauge or counter's value from /metrics.
double metric(int port, const std::string& name) {
  const Reply r = get(port, "/metrics");
  const auto at = r.raw.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::stod(r.raw.substr(at + name.size() + 2));
}

// The data: payloads of an SSE body.
std::vector<std::string> sse_events(const std::string& body) {
  std::vector<std::string> out;
  size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const size_t end = body.find("\n\n", at);
    out.push_back(body.substr(at + 6, end - at - 6));
    at = end;
  }
  return out;
}

// Runs a shell command; its stdout, and its exit status in *status.
std::string shell(const std::string& cmd, int* status) {
  FILE* f = popen(cmd.c_str(), "r");
  std::string out;
  if (!f) {
    *status = -1;
    return out;
  }
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  *status = pclose(f);
  return out;
}

#define START_SERVER(var, ...)                                       \
  TESSERA_REQUIRE_SHARED(kModel);                                    \
  ServerProcess var(__VA_ARGS__);                                    \
  ASSERT_GT(var.port(), 0) << "the server did not start:\n" << var.log()

TEST(Serve, CompletionMatchesGenerateAndEndpointsAnswer) {
  START_SERVER(s, args());
  const int p = s.port();
  EXPECT_EQ(get(p, "/health").body["status"], "ok");
  const Reply models = get(p, "/v1/models");
  ASSERT_EQ(models.status, 200);
  EXPECT_EQ(models.body["data"][0]["id"], "stories260K.bin");
  // Greedy completion = tessera generate's greedy output.
  const std::string text = completion_text(p, {{"prompt", "Once upon a time"}, {"max_tokens", 40}, {"temperature", 0}});
  const auto g = run_cli("generate -m " + q(shared_path(kModel)) + " --tokenizer " + q(shared_path(kTok)) +
                         " -p 'Once upon a time' -n 40 --temp 0");
  ASSERT_EQ(g.code, 0) << g.err;
  EXPECT_EQ(text + "\n", g.out);  // generate ends its output with a newline
  // tokenize / detokenize round trip.
  const Reply t = post(p, "/tokenize", json{{"content", "Once upon a time"}});
  ASSERT_EQ(t.status, 200) << t.raw;
  EXPECT_GE(t.body["tokens"].size(), 3u);
  const Reply d = post(p, "/detokenize", json{{"tokens", t.body["tokens"]}});
  EXPECT_EQ(d.body["content"], "Once upon a time");
  const Reply tp = post(p, "/tokenize", json{{"content", "Once"}, {"with_pieces", true}});
  EXPECT_TRUE(tp.body["tokens"][0].contains("piece")) << tp.raw;
  // apply-template: chatml.
  const Reply at = post(p, "/apply-template", json{{"messages", {{{"role", "user"}, {"content", "Hi"}}}}});
  EXPECT_EQ(at.body["prompt"], "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  // The web page.
  const Reply page = get(p, "/");
  EXPECT_EQ(page.status, 200);
  EXPECT_NE(page.raw.find("/v1/chat/completions"), std::string::npos);
  // Metrics name what happened.
  EXPECT_GE(metric(p, "tessera_generated_tokens_total"), 40);
  EXPECT_EQ(metric(p, "tessera_sequences_running"), 0);
  EXPECT_EQ(s.stop(), 0) << s.log();
}

// /health says 503 while the model loads (a 1B random-weight model takes seconds), then 200.
TEST(Serve, HealthIs503WhileLoading) {
  TESSERA_REQUIRE_SHARED("models/tokenizer.bin");
  ServerProcess s({"-m", "synthetic:1b:q4_0", "--tokenizer", shared_path("models/tokenizer.bin"), "-c", "256"}, 120, false);
  ASSERT_GT(s.listen_port(), 0) << s.log();
  const Reply loading = get(s.listen_port(), "/health");
  const Reply api = post(s.listen_port(), "/v1/completions", json{{"prompt", "a"}});
  int ok = 0;
  for (int i = 0; i < 1200 && ok != 200; ++i) {
    ok = get(s.listen_port(), "/health").status;
    if (ok != 200) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(loading.status, 503) << loading.raw;
  EXPECT_EQ(loading.body["error"]["type"], "unavailable_error");
  EXPECT_EQ(api.status, 503);
  EXPECT_EQ(ok, 200) << s.log();
}

// n concurrent requests return exactly what each returns alone (greedy, f32 KV),
// with the prefix cache on (the second wave reuses the first's blocks) and off.
void concurrent_equals_alone(bool prefix_cache) {
  std::vector<std::string> extra = {"--parallel", "3"};
  if (!prefix_cache) extra.push_back("--no-prefix-cache");
  START_SERVER(s, args(extra));
  const int p = s.port();
  const std::string shared =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. "
      "One day, she saw a big red ball under a tree and";
  const std::vector<std::string> prompts = {shared + " she ran", shared + " her mom said", "The cat sat",
                                            shared, "Tom had a dog", shared + " they went home"};
  std::vector<std::string> alone;
  for (const auto& pr : prompts) alone.push_back(completion_text(p, {{"prompt", pr}, {"max_tokens", 48}, {"temperature", 0}}));
  for (int wave = 0; wave < 2; ++wave) {
    std::vector<std::string> got(prompts.size());
    std::vector<std::thread> ts;
    for (size_t i = 0; i < prompts.size(); ++i)
      ts.emplace_back([&, i] { got[i] = completion_text(p, {{"prompt", prompts[i]}, {"max_tokens", 48}, {"temperature", 0}}); });
    for (auto& t : ts) t.join();
    for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(got[i], alone[i]) << "prompt " << i << ", wave " << wave;
  }
  const double hit = metric(p, "tessera_prompt_tokens_cached_total");
  if (prefix_cache) {
    EXPECT_GT(hit, 0);
    const Reply r = post(p, "/v1/completions", json{{"prompt", shared}, {"max_tokens", 4}, {"temperature", 0}});
    EXPECT_GE(r.body["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(), 32) << r.raw;
  } else {
    EXPECT_EQ(hit, 0);
    EXPECT_EQ(metric(p, "tessera_kv_blocks_used"), 0);
  }
}
TEST(Serve, ConcurrentRequestsEqualAloneWithPrefixCache) { concurrent_equals_alone(true); }

// A model with sliding-window layers (the Gemma 2 fixture: window 8 on even layers) keeps
// rings of blocks for them: greedy completions far past the window equal `tessera generate`
// keeping every position; the same prompt again cannot reuse the cached sequence (its ring
// moved on: recomputed, same text); a prompt that extends a cached one does reuse it.
TEST(Serve, SlidingWindowRingsAndThePrefixCache) {
  const char* gemma = "reference/arch/gemma2.gguf";
  TESSERA_REQUIRE_SHARED(gemma);
  const std::string m = shared_path(gemma);
  ServerProcess s({"-m", m, "-c", "1024", "-b", "16", "--step-tokens", "16", "--parallel", "2"});
  ASSERT_GT(s.port(), 0) << "the server did not start:\n" << s.log();
  EXPECT_NE(s.log().find("in rings for the sliding-window layers, window 8"), std::string::npos) << s.log();
  const int p = s.port();
  std::string a = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";
  for (int i = 0; i < 4; ++i) a += " Every day she ran to the big tree and sang a song with her friend Tom.";
  const auto gen = [&](const std::string& prompt, int n) {
    const auto g = run_cli("generate -m " + q(m) + " -c 1024 -b 1024 -p " + q(prompt) + " -n " + std::to_string(n) +
                           " --temp 0");
    EXPECT_EQ(g.code, 0) << g.err;
    return g.out;
  };
  const json body{{"prompt", a}, {"max_tokens", 120}, {"temperature", 0}};
  const Reply r1 = post(p, "/v1/completions", body);
  ASSERT_EQ(r1.status, 200) << r1.raw;
  ASSERT_GT(r1.body["usage"]["prompt_tokens"].get<int>(), 64);  // two full blocks a later prompt could share
  const std::string t1 = r1.body["choices"][0]["text"];
  EXPECT_EQ(t1 + "\n", gen(a, 120));
  const Reply r2 = post(p, "/v1/completions", body);
  ASSERT_EQ(r2.status, 200) << r2.raw;
  EXPECT_EQ(r2.body["choices"][0]["text"], t1);
  EXPECT_EQ(r2.body["usage"]["prompt_tokens_details"]["cached_tokens"], 0) << r2.raw;
  // The prompt alone, then one that extends it: that cached sequence's ring still holds the window.
  const Reply r3 = post(p, "/v1/completions", json{{"prompt", a}, {"max_tokens", 1}, {"temperature", 0}});
  ASSERT_EQ(r3.status, 200) << r3.raw;
  const std::string c = a + " Then one day";
  const Reply r4 = post(p, "/v1/completions", json{{"prompt", c}, {"max_tokens", 40}, {"temperature", 0}});
  ASSERT_EQ(r4.status, 200) << r4.raw;
  EXPECT_GE(r4.body["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(), 64) << r4.raw;
  EXPECT_EQ(r4.body["choices"][0]["text"].get<std::string>() + "\n", gen(c, 40));
  EXPECT_EQ(s.stop(), 0) << s.log();
}

// A prefix adapter in the server (--prefix-adapter; every sequence starts with its rows):
// greedy completions, alone and concurrent (two sharing a prompt prefix, so the prefix cache
// forks one), equal `tessera generate --prefix-adapter`'s, and differ from the base's.
TEST(Serve, PrefixAdapterMatchesGenerate) {
  TESSERA_REQUIRE_SHARED(kModel);
  const LoadedModel lm = load_model(shared_path(kModel), shared_path(kTok));
  const ModelConfig& c = lm.weights.cfg;
  KvPrefix px;
  px.len = 5, px.kv_dim = c.cache_kv_dim(), px.n_layers = c.n_layers;
  px.kv.resize(size_t(2 * px.n_layers * px.len * px.kv_dim));
  std::mt19937_64 rng(4);
  std::normal_distribution<float> d(0.f, 1.f);
  for (float& x : px.kv) x = d(rng);
  const std::string dir = temp_path("serve_prefix");
  std::filesystem::remove_all(dir);
  write_prefix_peft(px, c, dir);
  START_SERVER(s, args({"--prefix-adapter", dir, "--parallel", "3"}));
  const int p = s.port();
  const std::string shared =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. "
      "One day, she saw a big red ball under a tree and";  // more than one 32-token block: the prefix cache shares it
  const std::vector<std::string> prompts = {shared + " she ran", shared + " her mom said", "The cat sat"};
  std::vector<std::string> alone;
  int differ = 0;
  for (const auto& pr : prompts) {
    alone.push_back(completion_text(p, {{"prompt", pr}, {"max_tokens", 24}, {"temperature", 0}}));
    const std::string gen = "generate -m " + q(shared_path(kModel)) + " --tokenizer " + q(shared_path(kTok)) + " -p " +
                            q(pr) + " -n 24 --temp 0";
    const auto g = run_cli(gen + " --prefix-adapter " + q(dir));
    ASSERT_EQ(g.code, 0) << g.err;
    EXPECT_EQ(alone.back() + "\n", g.out) << pr;
    differ += run_cli(gen).out != g.out;
  }
  EXPECT_GT(differ, 0) << "the prefix changes nothing";
  std::vector<std::string> got(prompts.size());
  std::vector<std::thread> ts;
  for (size_t i = 0; i < prompts.size(); ++i)
    ts.emplace_back([&, i] { got[i] = completion_text(p, {{"prompt", prompts[i]}, {"max_tokens", 24}, {"temperature", 0}}); });
  for (auto& t : ts) t.join();
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(got[i], alone[i]) << "prompt " << i;
  EXPECT_GT(metric(p, "tessera_prompt_tokens_cached_total"), 0);
  EXPECT_EQ(s.stop(), 0) << s.log();
  std::filesystem::remove_all(dir);
}
TEST(Serve, ConcurrentRequestsEqualAloneWithoutPrefixCache) { concurrent_equals_alone(false); }

TEST(Serve, StreamingMatchesNonStreaming) {
  START_SERVER(s, args());
  const int p = s.port();
  const json body = {{"prompt", "Tom and Sue"}, {"max_tokens", 30}, {"temperature", 0}};
  const std::string whole = completion_text(p, body);
  json sb = body;
  sb["stream"] = true;
  sb["stream_options"] = {{"include_usage", true}};
  const Reply r = post(p, "/v1/completions", sb.dump());
  ASSERT_EQ(r.status, 200);
  const auto evs = sse_events(r.raw);
  ASSERT_GE(evs.size(), 3u) << r.raw;
  EXPECT_EQ(evs.back(), "[DONE]");
  std::string text, finish;
  for (size_t i = 0; i + 2 < evs.size(); ++i) {
    const json j = json::parse(evs[i]);
    EXPECT_EQ(j["object"], "text_completion");
    text += j["choices"][0]["text"].get<std::string>();
    if (!j["choices"][0]["finish_reason"].is_null()) finish = j["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, whole);
  EXPECT_EQ(finish, "length");
  const json usage = json::parse(evs[evs.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 30);

  // Chat streaming through curl: role first, then content deltas, then [DONE].
  const std::string req = json{{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"max_tokens", 12},
                               {"temperature", 0}, {"stream", true}}.dump();
  const std::string path = temp_path("chat_req.json");
  std::ofstream(path) << req;
  int status = 0;
  const std::string out = shell("curl -sN -H 'Content-Type: application/json' --data-binary @" + path + " http://127.0.0.1:" +
                                    std::to_string(p) + "/v1/chat/completions",
                                &status);
  ASSERT_EQ(status, 0) << "curl failed";
  std::remove(path.c_str());
  const auto cev = sse_events(out);
  ASSERT_GE(cev.size(), 3u) << out;
  EXPECT_EQ(json::parse(cev[0])["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(json::parse(cev[0])["object"], "chat.completion.chunk");
  EXPECT_EQ(cev.back(), "[DONE]");
  std::string chat_stream;
  for (size_t i = 0; i + 1 < cev.size(); ++i) {
    const json d = json::parse(cev[i])["choices"][0]["delta"];
    if (d.contains("content")) chat_stream += d["content"].get<std::string>();
  }
  json nb = json::parse(req);
  nb.erase("stream");
  const Reply whole_chat = post(p, "/v1/chat/completions", nb);
  EXPECT_EQ(whole_chat.body["choices"][0]["message"]["content"], chat_stream);
  EXPECT_EQ(whole_chat.body["object"], "chat.completion");
}

TEST(Serve, SamplingOptionsStopLogprobsAndN) {
  START_SERVER(s, args());
  const int p = s.port();
  // Stop string: the text ends before it, finish_reason stop.
  const std::string full = completion_text(p, {{"prompt", "Once upon a time"}, {"max_tokens", 40}, {"temperature", 0}});
  const Reply st = post(p, "/v1/completions", json{{"prompt", "Once upon a time"}, {"max_tokens", 40}, {"temperature", 0}, {"stop", {"Lily"}}});
  ASSERT_EQ(st.status, 200);
  EXPECT_EQ(st.body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(st.body["choices"][0]["text"], full.substr(0, full.find("Lily")));
  // n choices with a seed: reproducible, and as many as asked.
  const json nb = {{"prompt", "Once upon a time"}, {"max_tokens", 20}, {"temperature", 1.0}, {"seed", 7}, {"n", 3}, {"logprobs", 2}};
  const Reply a = post(p, "/v1/completions", nb), b = post(p, "/v1/completions", nb);
  ASSERT_EQ(a.status, 200) << a.raw;
  ASSERT_EQ(a.body["choices"].size(), 3u);
  EXPECT_EQ(a.body["choices"], b.body["choices"]);
  EXPECT_EQ(a.body["usage"]["completion_tokens"], 60);
  const json lp = a.body["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"].size(), 20u);
  EXPECT_EQ(lp["top_logprobs"][0].size(), 2u);
  EXPECT_LE(lp["token_logprobs"][0].get<double>(), 0.0);
  // Chat logprobs shape.
  const Reply c = post(p, "/v1/chat/completions", json{{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"max_tokens", 5},
                                                       {"logprobs", true}, {"top_logprobs", 3}});
  ASSERT_EQ(c.status, 200) << c.raw;
  const json content = c.body["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 5u);
  EXPECT_EQ(content[0]["top_logprobs"].size(), 3u);
  EXPECT_TRUE(content[0].contains("bytes"));
  // A JSON schema: the answer is one of the enum's values.
  const Reply js = post(p, "/v1/chat/completions",
                        json{{"messages", {{{"role", "user"}, {"content", "yes or no?"}}}},
                             {"response_format", {{"type", "json_schema"},
                                                  {"json_schema", {{"name", "a"}, {"schema", {{"type", "string"}, {"enum", {"yes", "no"}}}}}}}}});
  ASSERT_EQ(js.status, 200) << js.raw;
  std::string ans = js.body["choices"][0]["message"]["content"];
  while (!ans.empty() && std::isspace(static_cast<unsigned char>(ans.back()))) ans.pop_back();  // JSON allows trailing space
  EXPECT_TRUE(ans == "\"yes\"" || ans == "\"no\"") << ans;
}

TEST(Serve, BadInputGetsJsonErrorsAndTheServerKeepsServing) {
  START_SERVER(s, args({"--max-body", "4096", "-c", "128"}));
  const int p = s.port();
  struct Case {
    std::string path, body;
    int status;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"/v1/completions", "{\"prompt\": ", 400, "not valid JSON"},
      {"/v1/completions", "[1, 2]", 400, "JSON object"},
      {"/v1/completions", R"({"prompt": 5})", 400, "'prompt'"},
      {"/v1/completions", R"({"prompt": "a", "temperature": "hot"})", 400, "'temperature' must be a number"},
      {"/v1/completions", R"({"prompt": "a", "bogus": 1})", 400, "unrecognized request argument supplied: bogus"},
      {"/v1/completions", R"({"prompt": "a", "max_tokens": -1})", 400, "'max_tokens'"},
      {"/v1/completions", R"({"prompt": "a", "max_tokens": 100000000})", 400, "maximum context length"},
      {"/v1/completions", R"({"prompt": "a", "max_tokens": 1e30})", 400, "'max_tokens' must be an integer"},
      {"/v1/completions", R"({"prompt": "a", "n": 0})", 400, "'n'"},
      {"/v1/completions", R"({"prompt": "a", "stop": [1]})", 400, "'stop'"},
      {"/v1/completions", R"({"prompt": [99999]})", 400, "outside the vocabulary"},
      {"/v1/completions", "{\"prompt\": \"a\xff\xfe\"}", 400, "not valid JSON"},
      {"/v1/completions", R"({"prompt": "a", "grammar": "root ::= foo"})", 400, "foo"},
      {"/v1/chat/completions", R"({"messages": []})", 400, "'messages'"},
      {"/v1/chat/completions", R"({"messages": [{"role": "wizard", "content": "x"}]})", 400, "role"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}})", 400, "response_format"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}})", 400, "stream_options"},
      {"/tokenize", R"({"text": "a"})", 400, "'content'"},
      {"/detokenize", R"({"tokens": [-1]})", 400, "'tokens'"},
      {"/v1/completions", "{\"prompt\": \"" + std::string(5000, 'a') + "\"}", 413, "max-body"},
      {"/v1/nothing", "{}", 404, "no such endpoint"},
  };
  for (const auto& c : cases) {
    const Reply r = post(p, c.path, c.body);
    EXPECT_EQ(r.status, c.status) << c.path << " " << c.body.substr(0, 80) << " -> " << r.raw;
    ASSERT_TRUE(r.body.is_object() && r.body.contains("error")) << r.raw;
    EXPECT_NE(r.body["error"]["message"].get<std::string>().find(c.says), std::string::npos)
        << c.body.substr(0, 80) << " -> " << r.raw;
  }
  // A prompt longer than the context (128 tokens).
  std::string lng;
  for (int i = 0; i < 200; ++i) lng += "cat ";
  const Reply r = post(p, "/v1/completions", json{{"prompt", lng}});
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.raw.find("maximum context length"), std::string::npos) << r.raw;
  EXPECT_EQ(get(p, "/health").status, 200);
  EXPECT_EQ(completion_text(p, {{"prompt", "Once"}, {"max_tokens", 3}}).empty(), false) << "server log:\n" << s.log();
}

TEST(Serve, ApiKeyAndQueueLimit) {
  START_SERVER(s, args({"--api-key", "sekrit", "--parallel", "1", "--max-queue", "2"}));
  const int p = s.port();
  const std::string body = json{{"prompt", "Once"}, {"max_tokens", 3}}.dump();
  EXPECT_EQ(post(p, "/v1/completions", body).status, 401);
  const Reply wrong = post(p, "/v1/completions", body, {{"Authorization", "Bearer nope"}});
  EXPECT_EQ(wrong.status, 401);
  EXPECT_EQ(wrong.body["error"]["type"], "authentication_error");
  EXPECT_EQ(get(p, "/v1/models").status, 401);
  EXPECT_EQ(get(p, "/health").status, 200);  // open, for load balancers
  EXPECT_EQ(post(p, "/v1/completions", body, {{"Authorization", "Bearer sekrit"}}).status, 200);
  // More choices than the queue holds: 429, and the server goes on.
  const Reply busy = post(p, "/v1/completions", json{{"prompt", "Once"}, {"max_tokens", 3}, {"n", 3}}.dump(),
                          {{"Authorization", "Bearer sekrit"}});
  EXPECT_EQ(busy.status, 429) << busy.raw;
  EXPECT_EQ(busy.body["error"]["type"], "rate_limit_error");
  EXPECT_EQ(post(p, "/v1/completions", body, {{"Authorization", "Bearer sekrit"}}).status, 200);
}

// Opens a streaming request on a raw socket; reads until the first event (or
// the end when read_all) and closes. Returns the bytes read.
std::string raw_stream(int port, bool read_all) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  std::string got;
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    const std::string body = json{{"prompt", "Once upon a time"}, {"max_tokens", 24}, {"stream", true}}.dump();
    const std::string req = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                            "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    if (send(fd, req.data(), req.size(), MSG_NOSIGNAL) == ssize_t(req.size())) {
      char buf[4096];
      ssize_t n;
      while ((n = recv(fd, buf, sizeof buf, 0)) > 0) {
        got.append(buf, size_t(n));
        if (!read_all && got.find("data: ") != std::string::npos) break;
      }
    }
  }
  close(fd);
  return got;
}

// Sends a request on a raw socket and closes without reading the answer.
void send_and_close(int port, const json& body_json) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    const std::string body = body_json.dump();
    const std::string req = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    EXPECT_EQ(send(fd, req.data(), req.size(), MSG_NOSIGNAL), ssize_t(req.size()));
  }
  close(fd);
}

// Clients that leave before their answer, streaming or not, have their
// sequences freed: with one slot, the requests behind the first wait in the
// queue and are dropped there instead of being generated for nobody.
TEST(Serve, ClientsThatLeaveAreCancelled) {
  START_SERVER(s, args({"--parallel", "1", "-t", "1", "--no-prefix-cache"}));
  const int p = s.port();
  for (bool stream : {false, true}) {
    const double before = metric(p, "tessera_requests_cancelled_total");
    for (int i = 0; i < 4; ++i)
      send_and_close(p, {{"prompt", "Once upon a time"}, {"max_tokens", 400}, {"stream", stream}});
    for (int i = 0; i < 200 && (metric(p, "tessera_sequences_running") != 0 || metric(p, "tessera_sequences_queued") != 0 ||
                                metric(p, "tessera_requests_cancelled_total") < before + 4);
         ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    EXPECT_GE(metric(p, "tessera_requests_cancelled_total") - before, 3) << "stream " << stream;
    EXPECT_EQ(metric(p, "tessera_sequences_running"), 0);
    EXPECT_EQ(metric(p, "tessera_sequences_queued"), 0);
    EXPECT_EQ(metric(p, "tessera_kv_blocks_used"), 0);
  }
  EXPECT_EQ(completion_text(p, {{"prompt", "Once upon a time"}, {"max_tokens", 8}}).empty(), false);
  EXPECT_EQ(s.stop(), 0) << s.log();
}

TEST(Serve, TwoHundredConnectionsHalfDisconnectingFreeEverything) {
  START_SERVER(s, args({"--parallel", "4", "--max-queue", "256", "--no-prefix-cache"}));
  const int p = s.port();
  long rss_first = 0;
  for (int wave = 0; wave < 2; ++wave) {
    std::atomic<int> complete{0};
    std::vector<std::thread> ts;
    for (int i = 0; i < 200; ++i)
      ts.emplace_back([&, i] {
        const std::string got = raw_stream(p, i % 2 == 0);
        if (i % 2 == 0 && got.find("data: [DONE]") != std::string::npos) ++complete;
      });
    for (auto& t : ts) t.join();
    EXPECT_EQ(complete.load(), 100);
    // Every sequence ends and every block returns to the pool.
    for (int i = 0; i < 200 && (metric(p, "tessera_sequences_running") != 0 || metric(p, "tessera_sequences_queued") != 0); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_EQ(metric(p, "tessera_sequences_running"), 0);
    EXPECT_EQ(metric(p, "tessera_sequences_queued"), 0);
    EXPECT_EQ(metric(p, "tessera_kv_blocks_used"), 0);
    if (wave == 0) rss_first = s.rss_kib();
  }
#if !defined(__SANITIZE_ADDRESS__)  // ASan's quarantine keeps freed memory resident by design (LSan checks leaks there)
  EXPECT_LT(s.rss_kib() - rss_first, 16 * 1024) << "resident memory grew between two identical waves";
#else
  (void)rss_first;
#endif
  EXPECT_EQ(get(p, "/health").status, 200);
  EXPECT_EQ(s.stop(), 0) << s.log();
}

// The web page in headless Chromium: type a message, click Send, the streamed
// answer appears, equal to the API's greedy answer. The screenshot is kept as a
// CI artifact (build/artifacts/serve_chat.png).
TEST(Serve, WebChatPageInHeadlessChromium) {
  TESSERA_REQUIRE_SHARED(kModel);
  const char* chromium = "/usr/bin/chromium";
  if (!std::filesystem::exists(chromium) || std::system("node --experimental-websocket -e 'process.exit(typeof WebSocket === \"function\" ? 0 : 1)' 2>/dev/null") != 0)
    GTEST_SKIP() << "needs Debian's chromium and node >= 20.10 (scripts/install-deps.sh installs chromium)";
  START_SERVER(s, args());
  const int p = s.port();
  std::filesystem::create_directories(TESSERA_ARTIFACT_DIR);
  const std::string shot = std::string(TESSERA_ARTIFACT_DIR) + "/serve_chat.png";
  std::filesystem::remove(shot);
  const std::string cmd = "node --experimental-websocket " + q(std::string(TESSERA_SOURCE_DIR) + "/tests/web/chat_page.mjs") + " " +
                          chromium + " " + std::to_string(p) + " 'Hello there' " + q(shot);
  int status = 0;
  const std::string out = shell(cmd, &status);
  ASSERT_EQ(status, 0) << out;
  const json page = json::parse(out, nullptr, false);
  ASSERT_TRUE(page.is_object()) << out;
  const Reply r = post(p, "/v1/chat/completions", json{{"messages", {{{"role", "user"}, {"content", "Hello there"}}}},
                                                       {"max_tokens", 24}, {"temperature", 0}});
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(page["user"], "Hello there");
  EXPECT_EQ(page["answer"], r.body["choices"][0]["message"]["content"]);
  EXPECT_TRUE(page["errors"].empty()) << page.dump();
  EXPECT_NE(page["stats"].get<std::string>().find("tokens/s"), std::string::npos) << page.dump();
  EXPECT_GT(std::filesystem::file_size(shot), 1000u);
}

// The official OpenAI Node client: models, completions, chats, streaming with
// usage, and a 400 surfaced as the client's APIError.
TEST(Serve, OfficialOpenAINodeClient) {
  TESSERA_REQUIRE_SHARED(kModel);
  const std::string npm = TESSERA_NPM_DIR;
  if (!std::filesystem::exists(npm + "/node_modules/openai/index.mjs"))
    GTEST_SKIP() << "the openai npm package is not installed under " << npm << " (scripts/test.sh installs it)";
  START_SERVER(s, args());
  const int p = s.port();
  int status = 0;
  const std::string out = shell("node " + q(std::string(TESSERA_SOURCE_DIR) + "/tests/web/openai_client.mjs") + " " + q(npm) +
                                    " " + std::to_string(p) + " 2>&1",
                                &status);
  ASSERT_EQ(status, 0) << out;
  const json j = json::parse(out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << out;
  EXPECT_EQ(j["model"], "stories260K.bin");
  EXPECT_EQ(j["completion"], completion_text(p, {{"prompt", "Once upon a time"}, {"max_tokens", 16}, {"temperature", 0}}));
  EXPECT_EQ(j["completion_usage"]["completion_tokens"], 16);
  const Reply chat = post(p, "/v1/chat/completions", json{{"messages", {{{"role", "user"}, {"content", "Hello there"}}}},
                                                          {"max_tokens", 16}, {"temperature", 0}});
  EXPECT_EQ(j["chat"], chat.body["choices"][0]["message"]["content"]);
  EXPECT_EQ(j["chat_stream"], j["chat"]);
  EXPECT_EQ(j["chat_finish"], "length");
  EXPECT_EQ(j["stream_usage"]["completion_tokens"], 16);
  EXPECT_EQ(j["bad_request"]["status"], 400) << out;
}

// tessera chat (stdin piped) answers as the server does for the same conversation;
// chat-template prints what /apply-template returns.
TEST(Serve, ChatCliAndTemplateCliAgreeWithTheServer) {
  START_SERVER(s, args());
  const int p = s.port();
  const Reply r = post(p, "/v1/chat/completions", json{{"messages", {{{"role", "user"}, {"content", "Hello there"}}}},
                                                       {"max_tokens", 20}, {"temperature", 0}});
  ASSERT_EQ(r.status, 200) << r.raw;
  const std::string answer = r.body["choices"][0]["message"]["content"];
  const std::string in = temp_path("chat_in.txt");
  std::ofstream(in) << "Hello there\n/exit\n";
  const std::string cmd = std::string(TESSERA_CLI) + " chat -m " + q(shared_path(kModel)) + " --tokenizer " +
                          q(shared_path(kTok)) + " --temp 0 -n 20 < " + q(in) + " 2>/dev/null";
  int status = 0;
  const std::string out = shell(cmd, &status);
  EXPECT_EQ(status, 0);
  std::remove(in.c_str());
  EXPECT_EQ(out, answer + "\n");
  // chat-template = /apply-template, byte for byte.
  const std::string msgs = temp_path("msgs.json");
  const json conv = {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Hi"}}};
  std::ofstream(msgs) << conv.dump();
  const auto t = run_cli("chat-template -m " + q(shared_path(kModel)) + " --tokenizer " + q(shared_path(kTok)) + " --messages " + q(msgs));
  std::remove(msgs.c_str());
  ASSERT_EQ(t.code, 0) << t.err;
  EXPECT_EQ(t.out, post(p, "/apply-template", json{{"messages", conv}}).body["prompt"].get<std::string>());
  const auto bad = run_cli("chat-template --template /nonexistent.jinja --messages /nonexistent.json");
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.err.find("nonexistent"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace tessera::test
