// tessera serve: an OpenAI-compatible HTTP server (cpp-httplib) over the
// continuous-batching engine (serve/engine.h). Listens before the model is
// loaded (/health answers 503 until it is); every error is a JSON body with
// the right status; streaming is Server-Sent Events.
#include <dirent.h>
#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "chat_page.h"
#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "infer/chat_template.h"
#include "infer/grammar.h"
#include "serve/engine.h"
#include "serve/openai.h"

namespace tessera::cli {

namespace {

using json = nlohmann::json;
using serve::ApiError;

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

struct ServeArgs {
  std::string host = "127.0.0.1";
  int port = 8080;
  int parallel = 4;
  int64_t kv_blocks = 0;
  std::string api_key;
  std::string chat_template;
  int64_t max_queue = 64;
  int timeout = 600;
  std::string alias;
  bool no_prefix_cache = false;
  int64_t step_tokens = 256;
  size_t max_body = 8u << 20;
  int32_t max_n = 16;
};

struct Server {
  ServeArgs sa;
  ModelArgs ma;
  std::atomic<bool> ready{false};
  Loaded L;
  const Tokenizer* tok = nullptr;
  std::unique_ptr<ChatTemplate> tmpl;
  std::unique_ptr<serve::Engine> engine;
  serve::Metrics* metrics = nullptr;
  std::string model_name;
  std::mt19937_64 rng{std::random_device{}()};
  std::mutex rng_mu;

  uint64_t random() {
    std::lock_guard<std::mutex> lk(rng_mu);
    return rng();
  }
  std::string new_id(const char* prefix) {
    char b[40];
    std::snprintf(b, sizeof b, "%s-%016llx", prefix, (unsigned long long)random());
    return b;
  }
};

void send_error(httplib::Response& res, int status, const std::string& msg, const std::string& param = {},
                const std::string& type = "invalid_request_error") {
  res.status = status;
  res.set_content(dump(serve::error_json(msg, type, param, status)), "application/json");
}

void send_json(httplib::Response& res, const json& j) { res.set_content(dump(j), "application/json"); }

// The socket of a handler's connection. httplib 0.11 does not give it to a
// handler, so it is found among this process's descriptors by the two
// addresses the request names (the connection's thread keeps it open while its
// handler runs, so the descriptor cannot be reused meanwhile). -1 when not
// found (no /proc): the request then runs to its end if its client leaves.
int client_socket(const httplib::Request& req) {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return -1;
  int found = -1;
  const auto numeric = [](const sockaddr_storage& a, socklen_t n, std::string& host) {
    char h[NI_MAXHOST], p[NI_MAXSERV];
    if (getnameinfo(reinterpret_cast<const sockaddr*>(&a), n, h, sizeof h, p, sizeof p, NI_NUMERICHOST | NI_NUMERICSERV))
      return -1;
    host = h;
    return std::atoi(p);
  };
  while (dirent* e = readdir(d)) {
    const int fd = std::atoi(e->d_name);
    struct stat st;
    if (e->d_name[0] < '0' || e->d_name[0] > '9' || fd == dirfd(d) || fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
      continue;
    sockaddr_storage peer{}, local{};
    socklen_t np = sizeof peer, nl = sizeof local;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &np) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&local), &nl) != 0)
      continue;
    std::string ph, lh;
    if (numeric(peer, np, ph) == req.remote_port && ph == req.remote_addr && numeric(local, nl, lh) == req.local_port) {
      found = fd;
      break;
    }
  }
  closedir(d);
  return found;
}

// True when the client closed its end: the socket reads end-of-stream (or
// fails). Bytes waiting (a pipelined request) are left for httplib to read.
bool client_gone(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) return true;
  char c;
  const ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

json parse_body(const httplib::Request& req) {
  try {
    return json::parse(req.body);
  } catch (const json::parse_error& e) {
    throw ApiError(400, std::string("the request body is not valid JSON: ") + e.what());
  }
}

void handle_completion(Server& S, const httplib::Request& req, httplib::Response& res, bool chat) {
  const json body = parse_body(req);
  serve::CompletionRequest cr = serve::parse_completion(body, chat, S.sa.max_n);
  const int64_t ctx = S.engine->options().ctx_size;
  // The prompts as token ids.
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::string> echo_text;
  if (chat) {
    std::string text;
    try {
      text = S.tmpl->apply(cr.messages, true);
    } catch (const Error& e) {
      throw ApiError(400, std::string("the chat template failed: ") + e.what(), "messages");
    }
    prompts.push_back(chat_tokens(*S.tok, text));
  } else {
    for (size_t i = 0; i < cr.prompts.size(); ++i) {
      if (!cr.prompt_ids[i].empty()) {
        for (int32_t t : cr.prompt_ids[i])
          if (t >= S.tok->n_vocab())
            throw ApiError(400, "prompt token id " + std::to_string(t) + " is outside the vocabulary of " +
                                    std::to_string(S.tok->n_vocab()), "prompt");
        prompts.push_back(cr.prompt_ids[i]);
        echo_text.push_back(S.tok->decode(cr.prompt_ids[i]));
      } else {
        prompts.push_back(prompt_tokens(*S.tok, cr.prompts[i], EncodeOptions{true, true}));
        echo_text.push_back(cr.prompts[i]);
      }
    }
  }
  for (const auto& p : prompts) {
    const int64_t P = int64_t(p.size());
    if (P >= ctx)
      throw ApiError(400, "this model's maximum context length is " + std::to_string(ctx) + " tokens; the prompt has " +
                              std::to_string(P) + " (no room for a generated token)", chat ? "messages" : "prompt");
    if (cr.max_tokens >= 0 && P + cr.max_tokens > ctx)
      throw ApiError(400, "this model's maximum context length is " + std::to_string(ctx) + " tokens; you asked for " +
                              std::to_string(P + cr.max_tokens) + " (" + std::to_string(P) + " in the prompt, " +
                              std::to_string(cr.max_tokens) + " in the completion)", "max_tokens");
  }
  std::shared_ptr<const Grammar> grammar;
  if (!cr.grammar.empty()) {
    try {
      grammar = std::make_shared<const Grammar>(Grammar::parse(cr.grammar, "the request's grammar"));
    } catch (const Error& e) {
      throw ApiError(400, e.what(), body.contains("grammar") ? "grammar" : "response_format");
    }
  }
  std::vector<serve::Request> rs;
  const uint64_t base_seed = cr.seeded ? cr.sampling.seed : S.random();
  for (size_t i = 0; i < prompts.size(); ++i)
    for (int32_t j = 0; j < cr.n; ++j) {
      serve::Request r;
      r.index = int32_t(i) * cr.n + j;
      r.prompt = prompts[i];
      r.params.n_predict = cr.max_tokens;
      r.params.stop = cr.stop;
      r.params.sampling = cr.sampling;
      r.params.sampling.seed = base_seed + uint64_t(j);
      r.params.logprobs = cr.logprobs;
      r.grammar = grammar;
      rs.push_back(std::move(r));
    }
  const size_t n_choices = rs.size();
  std::shared_ptr<serve::Stream> stream;
  try {
    stream = S.engine->submit(std::move(rs));
  } catch (const serve::QueueFull& e) {
    throw ApiError(429, e.what(), "", "rate_limit_error");
  } catch (const Error& e) {
    throw ApiError(400, e.what());
  }
  const std::string id = S.new_id(chat ? "chatcmpl" : "cmpl");
  const int64_t created = int64_t(std::time(nullptr));
  serve::Usage usage;
  for (const auto& p : prompts) usage.prompt += int64_t(p.size()) * cr.n;

  if (!cr.stream) {
    std::vector<std::string> text(n_choices);
    std::vector<std::vector<TokenLogprob>> lps(n_choices);
    std::vector<std::string> finish(n_choices);
    size_t done = 0;
    std::string error;
    std::vector<serve::Event> evs;
    const int client = client_socket(req);
    auto checked = std::chrono::steady_clock::now();
    while (done < n_choices) {
      evs.clear();
      const bool got = stream->wait(evs, std::chrono::milliseconds(50));
      const auto now = std::chrono::steady_clock::now();
      if (now - checked >= std::chrono::milliseconds(50)) {
        checked = now;
        if (client_gone(client)) {  // free the sequences now instead of generating for nobody
          stream->cancel();
          if (S.metrics) S.metrics->count_cancelled();
          res.status = 499;  // nginx's "client closed request", for the request counter; nobody reads it
          return;
        }
      }
      if (!got) continue;
      for (auto& e : evs) {
        const size_t k = size_t(e.index);
        text[k] += e.text;
        lps[k].insert(lps[k].end(), e.logprobs.begin(), e.logprobs.end());
        if (e.done) {
          ++done;
          finish[k] = e.finish_reason;
          usage.completion += e.n_generated;
          usage.cached += e.n_cached;
          if (e.finish_reason == "error") error = e.error;
        }
      }
    }
    if (!error.empty()) throw ApiError(500, "generation failed: " + error, "", "server_error");
    json choices = json::array();
    for (size_t k = 0; k < n_choices; ++k) {
      json c = {{"index", k}, {"finish_reason", finish[k]}};
      c["logprobs"] = cr.logprobs >= 0 ? serve::logprobs_json(lps[k], *S.tok, chat, 0) : json(nullptr);
      if (chat)
        c["message"] = {{"role", "assistant"}, {"content", text[k]}};
      else
        c["text"] = (cr.echo ? echo_text[k / size_t(cr.n)] : std::string()) + text[k];
      choices.push_back(c);
    }
    send_json(res, {{"id", id},
                    {"object", chat ? "chat.completion" : "text_completion"},
                    {"created", created},
                    {"model", S.model_name},
                    {"choices", choices},
                    {"usage", serve::usage_json(usage)}});
    return;
  }

  // Server-Sent Events.
  struct State {
    std::shared_ptr<serve::Stream> stream;
    size_t done = 0;
    bool started = false, finished = false;
    std::vector<int64_t> offset;
  };
  auto st = std::make_shared<State>();
  st->stream = stream;
  st->offset.assign(n_choices, 0);
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  const int client = client_socket(req);
  res.set_chunked_content_provider(
      "text/event-stream",
      [&S, st, cr, chat, id, created, n_choices, usage, echo_text, client](size_t, httplib::DataSink& sink) mutable {
        const auto chunk = [&](json choices, const json* u) {
          json j = {{"id", id},
                    {"object", chat ? "chat.completion.chunk" : "text_completion"},
                    {"created", created},
                    {"model", S.model_name},
                    {"choices", std::move(choices)}};
          if (u) j["usage"] = *u;
          const std::string line = "data: " + dump(j) + "\n\n";
          return sink.write(line.data(), line.size());
        };
        if (!st->started) {
          st->started = true;
          json cs = json::array();
          for (size_t k = 0; k < n_choices; ++k) {
            if (chat)
              cs.push_back({{"index", k}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr}, {"finish_reason", nullptr}});
            else if (cr.echo)
              cs.push_back({{"index", k}, {"text", echo_text[k / size_t(cr.n)]}, {"logprobs", nullptr}, {"finish_reason", nullptr}});
          }
          if (!cs.empty() && !chunk(cs, nullptr)) return false;
        }
        std::vector<serve::Event> evs;
        if (!st->stream->wait(evs, std::chrono::milliseconds(200))) {
          if (!sink.is_writable() || client_gone(client)) return false;  // left while queued or prefilling
          return true;
        }
        std::string error;
        for (auto& e : evs) {
          const size_t k = size_t(e.index);
          json c = {{"index", k}, {"finish_reason", nullptr}};
          c["logprobs"] = cr.logprobs >= 0 ? serve::logprobs_json(e.logprobs, *S.tok, chat, st->offset[k]) : json(nullptr);
          for (const auto& lp : e.logprobs) st->offset[k] += int64_t(S.tok->token_bytes(lp.id).size());
          if (chat)
            c["delta"] = e.text.empty() ? json::object() : json{{"content", e.text}};
          else
            c["text"] = e.text;
          if (e.done) {
            ++st->done;
            usage.completion += e.n_generated;
            usage.cached += e.n_cached;
            if (e.finish_reason == "error") error = e.error;
            c["finish_reason"] = e.finish_reason == "error" ? "stop" : e.finish_reason;
          }
          if (!chunk(json::array({c}), nullptr)) return false;
        }
        if (!error.empty()) {
          const std::string line = "data: " + dump(serve::error_json("generation failed: " + error, "server_error", "", 500)) + "\n\n";
          sink.write(line.data(), line.size());
        }
        if (st->done == n_choices) {
          if (cr.include_usage) {
            const json u = serve::usage_json(usage);
            if (!chunk(json::array(), &u)) return false;
          }
          const std::string fin = "data: [DONE]\n\n";
          sink.write(fin.data(), fin.size());
          st->finished = true;
          sink.done();
        }
        return true;
      },
      [&S, st](bool) {
        if (st->finished) return;
        st->stream->cancel();  // the client went away
        if (S.metrics) S.metrics->count_cancelled();
      });
}

// Wraps a handler: ApiError / Error / parse failures become JSON errors; 503 while loading.
template <class F>
httplib::Server::Handler guarded(Server& S, F f, bool need_model = true) {
  return [&S, f, need_model](const httplib::Request& req, httplib::Response& res) {
    if (need_model && !S.ready) return send_error(res, 503, "the model is loading", "", "unavailable_error");
    try {
      f(req, res);
    } catch (const ApiError& e) {
      send_error(res, e.status, e.what(), e.param, e.type);
    } catch (const Error& e) {
      send_error(res, 400, e.what());
    } catch (const json::exception& e) {
      send_error(res, 400, std::string("bad request: ") + e.what());
    }
  };
}

void routes(httplib::Server& svr, Server& S) {
  svr.Get("/", [](const httplib::Request&, httplib::Response& res) { res.set_content(kChatPage, "text/html; charset=utf-8"); });
  svr.Get("/health", [&S](const httplib::Request&, httplib::Response& res) {
    if (!S.ready) return send_error(res, 503, "the model is loading", "", "unavailable_error");
    send_json(res, {{"status", "ok"}});
  });
  svr.Get("/v1/models", guarded(S, [&S](const httplib::Request&, httplib::Response& res) {
    const auto& c = S.L.lm->weights.cfg;
    send_json(res, {{"object", "list"},
                    {"data", json::array({{{"id", S.model_name},
                                           {"object", "model"},
                                           {"created", 0},
                                           {"owned_by", "tessera"},
                                           {"meta", {{"n_vocab", c.vocab_size}, {"n_ctx", S.engine->options().ctx_size},
                                                     {"n_ctx_train", c.max_seq_len}, {"n_layers", c.n_layers}, {"dim", c.dim}}}}})}});
  }));
  svr.Get("/metrics", guarded(S, [&S](const httplib::Request&, httplib::Response& res) {
    const auto g = S.engine->gauges();
    res.set_content(S.metrics->render(g.running, g.queued, g.kv_blocks_used, g.kv_blocks_free, g.cached_seqs),
                    "text/plain; version=0.0.4");
  }));
  svr.Post("/v1/completions", guarded(S, [&S](const httplib::Request& q, httplib::Response& r) { handle_completion(S, q, r, false); }));
  svr.Post("/v1/chat/completions", guarded(S, [&S](const httplib::Request& q, httplib::Response& r) { handle_completion(S, q, r, true); }));
  svr.Post("/tokenize", guarded(S, [&S](const httplib::Request& req, httplib::Response& res) {
    const json b = parse_body(req);
    if (!b.is_object() || !b.contains("content") || !b["content"].is_string())
      throw ApiError(400, "'content' (a string) is required", "content");
    bool add_special = false, with_pieces = false;
    for (const auto& [k, v] : b.items()) {
      if (k == "add_special") {
        if (!v.is_boolean()) throw ApiError(400, "'add_special' must be a boolean", k);
        add_special = v;
      } else if (k == "with_pieces") {
        if (!v.is_boolean()) throw ApiError(400, "'with_pieces' must be a boolean", k);
        with_pieces = v;
      } else if (k != "content") {
        throw ApiError(400, "unrecognized argument: " + k, k);
      }
    }
    const auto ids = S.tok->encode(b["content"].get<std::string>(), EncodeOptions{add_special, true});
    json toks = json::array();
    for (int32_t t : ids)
      toks.push_back(with_pieces ? json{{"id", t}, {"piece", S.tok->token_bytes(t)}} : json(t));
    send_json(res, {{"tokens", toks}});
  }));
  svr.Post("/detokenize", guarded(S, [&S](const httplib::Request& req, httplib::Response& res) {
    const json b = parse_body(req);
    if (!b.is_object() || !b.contains("tokens") || !b["tokens"].is_array())
      throw ApiError(400, "'tokens' (an array of token ids) is required", "tokens");
    std::vector<int32_t> ids;
    for (const auto& t : b["tokens"]) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= S.tok->n_vocab())
        throw ApiError(400, "'tokens' entries must be token ids in [0, " + std::to_string(S.tok->n_vocab()) + "), got " + t.dump(), "tokens");
      ids.push_back(t.get<int32_t>());
    }
    send_json(res, {{"content", S.tok->decode(ids)}});
  }));
  svr.Post("/apply-template", guarded(S, [&S](const httplib::Request& req, httplib::Response& res) {
    const json b = parse_body(req);
    if (!b.is_object() || !b.contains("messages")) throw ApiError(400, "'messages' is required", "messages");
    const auto cr = serve::parse_completion(json{{"messages", b["messages"]}}, true, 1);
    send_json(res, {{"prompt", S.tmpl->apply(cr.messages, true)}});
  }));
}

}  // namespace

int cmd_serve(int argc, char** argv) {
  CLI::App app{"tessera serve: an OpenAI-compatible HTTP server with continuous batching"};
  Server S;
  add_model_options(app, S.ma);
  auto& sa = S.sa;
  app.add_option("--host", sa.host, "address to bind (default 127.0.0.1: this machine only)");
  app.add_option("--port", sa.port, "port (default 8080; 0: any free port, printed at start)")->check(CLI::Range(0, 65535));
  app.add_option("--parallel", sa.parallel, "sequences generated at once (default 4)")->check(positive());
  app.add_option("--kv-blocks", sa.kv_blocks, "KV cache blocks of 32 positions in the pool (default: --parallel full contexts)")->check(positive());
  app.add_option("--api-key", sa.api_key, "require 'Authorization: Bearer KEY' on the API endpoints");
  app.add_option("--chat-template", sa.chat_template, "chat template: chatml, or a Jinja file (default: the model's own, else chatml)");
  app.add_option("--max-queue", sa.max_queue, "requests that may wait for a slot; more get 429 (default 64)")->check(positive());
  app.add_option("--timeout", sa.timeout, "seconds a connection may stay silent while reading or writing (default 600)")->check(positive());
  app.add_option("--alias", sa.alias, "model name reported by the API (default: the model file's name)");
  app.add_flag("--no-prefix-cache", sa.no_prefix_cache, "do not reuse the KV of earlier prompts");
  app.add_option("--step-tokens", sa.step_tokens, "tokens per scheduler step: decode tokens plus prompt chunks (default 256)")->check(positive());
  app.add_option("--max-body", sa.max_body, "largest request body in bytes (default 8 MiB); larger gets 413")->check(positive());
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;

  httplib::Server svr;
  routes(svr, S);
  svr.set_payload_max_length(sa.max_body);
  svr.set_tcp_nodelay(true);  // streamed chunks go out at once (no Nagle / delayed-ACK stalls)
  svr.set_read_timeout(sa.timeout, 0);
  svr.set_write_timeout(sa.timeout, 0);
  const size_t n_threads = size_t(std::min<int64_t>(1024, sa.parallel + sa.max_queue + 16));
  svr.new_task_queue = [n_threads] { return new httplib::ThreadPool(n_threads); };
  svr.set_pre_routing_handler([&S](const httplib::Request& req, httplib::Response& res) {
    if (S.sa.api_key.empty() || req.path == "/" || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
    if (req.get_header_value("Authorization") != "Bearer " + S.sa.api_key) {
      send_error(res, 401, "invalid or missing API key (send 'Authorization: Bearer KEY')", "", "authentication_error");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  svr.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 413) return send_error(res, 413, "the request body is larger than the server's --max-body");
    if (res.status == 404) return send_error(res, 404, "no such endpoint: " + req.method + " " + req.path, "", "not_found_error");
    send_error(res, res.status, "HTTP error " + std::to_string(res.status));
  });
  svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_error(res, 500, what, "", "server_error");
  });
  svr.set_logger([&S](const httplib::Request& req, const httplib::Response& res) {
    // Unknown paths share one label, so a client cannot grow the metric set without bound.
    static const char* known[] = {"/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions",
                                  "/tokenize", "/detokenize", "/apply-template"};
    const bool is_known = std::any_of(std::begin(known), std::end(known), [&](const char* k) { return req.path == k; });
    if (S.metrics) S.metrics->count_request(is_known ? req.path : "other", res.status);
  });
  // The listening socket: SO_REUSEADDR (not httplib's SO_REUSEPORT, which lets a second server bind the same
  // port silently), and a deep accept queue (the library listens with a backlog of 5, so a burst of clients
  // overflowed it and waited out SYN retransmits of seconds).
  int listen_fd = -1;
  svr.set_socket_options([&listen_fd](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    listen_fd = sock;
  });
  int port = sa.port;
  if (port == 0) {
    port = svr.bind_to_any_port(sa.host);
    if (port <= 0) fail("cannot bind ", sa.host, " (any port)");
  } else if (!svr.bind_to_port(sa.host, port)) {
    fail("cannot bind ", sa.host, ":", port, " (in use, or not an address of this machine)");
  }
  if (listen_fd >= 0 && ::listen(listen_fd, 1024) != 0)
    std::fprintf(stderr, "tessera: warning: cannot deepen the accept queue: %s\n", std::strerror(errno));
  // The accept loop on its own thread; wait until it runs, so that the watch below (and svr.stop() on a
  // failed load) never mistake a thread not yet scheduled for a listener that ended.
  std::atomic<bool> http_ended{false};
  std::thread http([&] {
    svr.listen_after_bind();
    http_ended = true;
  });
  while (!svr.is_running() && !http_ended) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::fprintf(stderr, "tessera: listening on http://%s:%d (loading the model)\n", sa.host.c_str(), port);
  try {
    S.ma.own_cache = false;
    S.L = load(S.ma);
    S.tok = &require_tokenizer(*S.L.lm);
    S.tmpl = std::make_unique<ChatTemplate>(load_chat_template(sa.chat_template, *S.L.lm, *S.tok));
    serve::EngineOptions eo;
    eo.parallel = sa.parallel;
    eo.ctx_size = S.L.model->n_ctx();
    eo.kv_blocks = sa.kv_blocks;
    eo.step_tokens = std::max<int64_t>(sa.step_tokens, sa.parallel + 1);
    eo.max_queue = sa.max_queue;
    eo.prefix_cache = !sa.no_prefix_cache;
    S.engine = std::make_unique<serve::Engine>(*S.L.model, *S.L.ctx, *S.tok, eo);
    S.metrics = &S.engine->metrics();
    const auto p = S.L.lm->path;
    S.model_name = !sa.alias.empty() ? sa.alias : p.substr(p.find_last_of('/') == std::string::npos ? 0 : p.find_last_of('/') + 1);
  } catch (...) {
    svr.stop();
    http.join();
    throw;
  }
  S.ready = true;
  const auto g = S.engine->gauges();
  std::string rings;  // sliding-window layers keep rings of blocks in a pool of their own
  if (g.kv_window_blocks > 0)
    rings = " (+ " + std::to_string(g.kv_window_blocks) + " in rings for the sliding-window layers, window " +
            std::to_string(g.kv_window) + ")";
  std::fprintf(stderr, "tessera: ready: %d parallel sequences, context %lld, %lld KV blocks%s, chat template %s\n",
               sa.parallel, (long long)S.engine->options().ctx_size, (long long)g.kv_blocks_total, rings.c_str(),
               S.tmpl->name().c_str());
  install_stop_handlers();
  while (!*stop_requested() && !http_ended) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::fprintf(stderr, "tessera: shutting down (%s)\n",
               *stop_requested() ? "signal" : "the HTTP listener stopped: cpp-httplib's accept loop ended");
  S.engine->shutdown();  // open streams end with an error event, so their handlers return
  svr.stop();
  http.join();
  S.engine.reset();
  return 0;
}

}  // namespace tessera::cli
