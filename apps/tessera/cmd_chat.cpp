// tessera chat: a multi-turn conversation in the terminal through the model's
// chat template, streaming each reply; the KV cache keeps the conversation, so
// each turn runs only its new tokens. /reset, /system TEXT, /exit; Ctrl-C
// stops a reply without leaving.
// tessera chat-template: prints a conversation rendered by a template, exactly.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "core/mmap.h"
#include "infer/chat_template.h"
#include "infer/generate.h"

namespace tessera::cli {

namespace {

std::vector<ChatMessage> read_messages(const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": not valid JSON: ", e.what());
  }
  if (j.is_object() && j.contains("messages")) j = j["messages"];
  if (!j.is_array()) fail(path, ": expected an array of {\"role\", \"content\"} messages (or {\"messages\": [...]})");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& m = j[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") || !m["content"].is_string())
      fail(path, ": message ", i, " needs string fields 'role' and 'content'");
    out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return out;
}

}  // namespace

int cmd_chat_template(int argc, char** argv) {
  CLI::App app{"tessera chat-template: print a conversation rendered by a chat template (no newline added)"};
  std::string model, tokenizer, tmpl, messages;
  std::string bos, eos;
  bool no_gen = false;
  auto* m = app.add_option("-m,--model", model, "take the model's own template (and its BOS / EOS strings)");
  app.add_option("--tokenizer", tokenizer, "tokenizer file for models that carry none");
  app.add_option("--template", tmpl, "a Jinja template file, or the built-in name chatml")->excludes(m);
  app.add_option("--messages", messages, "JSON file: [{\"role\": ..., \"content\": ...}, ...]")->required();
  auto* ob = app.add_option("--bos", bos, "bos_token the template sees (default: the model's, else empty)");
  auto* oe = app.add_option("--eos", eos, "eos_token the template sees (default: the model's, else empty)");
  app.add_flag("--no-generation-prompt", no_gen, "do not open the assistant's turn at the end");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  if (model.empty() && tmpl.empty()) fail("give -m MODEL or --template FILE");
  const auto msgs = read_messages(messages);
  ChatTemplate t = ChatTemplate::builtin("chatml");
  if (!model.empty()) {
    const LoadedModel lm = load_model(model, tokenizer);
    const Tokenizer& tok = require_tokenizer(lm);
    if (!ob->count()) bos = tok.bos_id() >= 0 ? tok.piece(tok.bos_id()) : "";
    if (!oe->count()) eos = tok.eos_id() >= 0 ? tok.piece(tok.eos_id()) : "";
    t = lm.chat_template.empty() ? ChatTemplate::builtin("chatml") : ChatTemplate::from_source(lm.chat_template, bos, eos);
  } else if (tmpl != "chatml") {
    t = ChatTemplate::from_source(read_file(tmpl), bos, eos, tmpl);
  }
  const std::string out = t.apply(msgs, !no_gen);
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

int cmd_chat(int argc, char** argv) {
  CLI::App app{"tessera chat: talk to a model in the terminal (/reset, /system TEXT, /exit; Ctrl-C stops a reply)"};
  ModelArgs ma;
  add_model_options(app, ma);
  std::string tmpl_arg, system;
  GenerateParams gp;
  gp.n_predict = -1;
  SamplerParams& sp = gp.sampling;
  int64_t seed = -1;
  app.add_option("--chat-template", tmpl_arg, "chatml, or a Jinja file (default: the model's own, else chatml)");
  app.add_option("--system", system, "system message");
  app.add_option("-n,--n-predict", gp.n_predict, "most tokens per reply (-1: until the context is full)");
  add_sampling_options(app, sp, seed);
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  sp.seed = seed < 0 ? std::random_device{}() : uint64_t(seed);
  sp.validate();
  Loaded L = load(ma);
  const Tokenizer& tok = require_tokenizer(*L.lm);
  const ChatTemplate tmpl = load_chat_template(tmpl_arg, *L.lm, tok);
  std::fprintf(stderr, "tessera: chat template %s; /reset, /system TEXT, /exit; Ctrl-C stops a reply\n", tmpl.name().c_str());
  install_interrupt_handler();
  const bool tty = isatty(0);
  std::vector<ChatMessage> conv;
  if (!system.empty()) conv.push_back({"system", system});
  std::vector<int32_t> cached;  // tokens whose K/V are in the model's cache
  std::vector<float> logits(size_t(L.model->config().vocab_size));
  Sampler sampler(sp, int32_t(logits.size()));
  for (;;) {
    if (tty) std::fputs("> ", stdout), std::fflush(stdout);
    std::string line;
    clear_stop_request();
    if (!std::getline(std::cin, line)) {
      if (*stop_requested()) {  // Ctrl-C at the prompt: a fresh prompt
        std::cin.clear();
        std::fputc('\n', stdout);
        continue;
      }
      break;
    }
    if (line.empty()) continue;
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      conv.erase(std::remove_if(conv.begin(), conv.end(), [](const ChatMessage& m) { return m.role != "system"; }), conv.end());
      std::fprintf(stderr, "(conversation cleared)\n");
      continue;
    }
    if (line.rfind("/system", 0) == 0) {
      const std::string s = line.size() > 8 ? line.substr(8) : "";
      conv.erase(std::remove_if(conv.begin(), conv.end(), [](const ChatMessage& m) { return m.role == "system"; }), conv.end());
      if (!s.empty()) conv.insert(conv.begin(), ChatMessage{"system", s});
      std::fprintf(stderr, "(system message %s)\n", s.empty() ? "removed" : "set");
      continue;
    }
    conv.push_back({"user", line});
    const std::vector<int32_t> prompt = chat_tokens(tok, tmpl.apply(conv, true));
    if (int64_t(prompt.size()) >= L.model->n_ctx()) {
      std::fprintf(stderr, "error: the conversation (%zu tokens) fills the context of %lld; /reset to start over\n",
                   prompt.size(), (long long)L.model->n_ctx());
      conv.pop_back();
      continue;
    }
    // Reuse the cached prefix; run the rest.
    size_t keep = 0;
    while (keep < cached.size() && keep + 1 < prompt.size() && cached[keep] == prompt[keep]) ++keep;
    if (!L.model->can_resume(int64_t(keep))) keep = 0;  // a sliding window moved past it: run it all again
    const auto t0 = std::chrono::steady_clock::now();
    const float* out = L.model->forward(*L.ctx, prompt.data() + keep, int64_t(prompt.size() - keep), int64_t(keep));
    cached = prompt;
    GenerateStats st;
    st.tokens = prompt;
    std::string reply;
    const std::function<void(std::string_view)> on_text = [&](std::string_view t) {
      reply.append(t);
      std::fwrite(t.data(), 1, t.size(), stdout);
      std::fflush(stdout);
    };
    TokenEmitter emit(tok, gp, st, on_text);
    const auto t1 = std::chrono::steady_clock::now();
    bool interrupted = false;
    while (gp.n_predict != 0) {
      if (*stop_requested()) {
        interrupted = true;
        break;
      }
      std::copy(out, out + logits.size(), logits.begin());
      int32_t next = sampler.sample(logits.data(), st.tokens);
      if (!emit.push(next)) break;
      if (int64_t(cached.size()) >= L.model->n_ctx()) break;
      out = L.model->forward(*L.ctx, &next, 1, int64_t(cached.size()));
      cached.push_back(next);
    }
    emit.finish();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    std::fputc('\n', stdout);
    std::fflush(stdout);
    std::fprintf(stderr, "(%lld tokens, %.1f tok/s, prompt %zu new of %zu tokens in %.0f ms%s)\n", (long long)st.n_generated,
                 dt > 0 ? double(st.n_generated) / dt : 0.0, prompt.size() - keep, prompt.size(),
                 1e3 * std::chrono::duration<double>(t1 - t0).count(), interrupted ? ", stopped" : "");
    conv.push_back({"assistant", reply});
  }
  return 0;
}

}  // namespace tessera::cli
