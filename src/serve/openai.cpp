#include "serve/openai.h"

#include <cmath>
#include <set>

#include "infer/grammar.h"
#include "infer/json_schema.h"

namespace tessera::serve {

using nlohmann::json;

json error_json(const std::string& message, const std::string& type, const std::string& param, int status) {
  json e = {{"message", message}, {"type", type}, {"code", status}};
  e["param"] = param.empty() ? json(nullptr) : json(param);
  return json{{"error", e}};
}

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& msg) { throw ApiError(400, msg, param); }

const char* type_name(const json& v) { return v.type_name(); }

double number(const json& v, const std::string& k, double lo, double hi) {
  if (!v.is_number()) bad(k, "'" + k + "' must be a number, got " + type_name(v));
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    bad(k, "'" + k + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + v.dump());
  return x;
}

int64_t integer(const json& v, const std::string& k, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) bad(k, "'" + k + "' must be an integer, got " + (v.is_number() ? v.dump() : std::string(type_name(v))));
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)) bad(k, "'" + k + "' is too large: " + v.dump());
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) bad(k, "'" + k + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + v.dump());
  return x;
}

bool boolean(const json& v, const std::string& k) {
  if (!v.is_boolean()) bad(k, "'" + k + "' must be a boolean, got " + type_name(v));
  return v.get<bool>();
}

std::vector<int32_t> token_ids(const json& a, const std::string& k) {
  std::vector<int32_t> ids;
  for (const auto& t : a) ids.push_back(int32_t(integer(t, k, 0, INT32_MAX)));
  if (ids.empty()) bad(k, "'" + k + "' has an empty token list");
  return ids;
}

std::string message_content(const json& c, const std::string& k) {
  if (c.is_null()) return {};
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) bad(k, "'" + k + "' must be a string or an array of content parts, got " + type_name(c));
  std::string out;
  for (const auto& part : c) {
    if (!part.is_object() || !part.contains("type") || part["type"] != "text" || !part.contains("text") ||
        !part["text"].is_string())
      bad(k, "'" + k + "': only text content parts ({\"type\": \"text\", \"text\": ...}) are supported");
    out += part["text"].get<std::string>();
  }
  return out;
}

}  // namespace

CompletionRequest parse_completion(const json& body, bool chat, int64_t max_n) {
  if (!body.is_object()) bad("", "the request body must be a JSON object");
  static const std::set<std::string> common = {
      "model", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "presence_penalty", "frequency_penalty",
      "logprobs", "stream", "stream_options", "response_format", "user", "logit_bias",
      "top_k", "min_p", "repeat_penalty", "grammar"};
  static const std::set<std::string> completions_only = {"prompt", "echo", "best_of", "suffix"};
  static const std::set<std::string> chat_only = {"messages", "top_logprobs", "max_completion_tokens"};
  for (const auto& [k, v] : body.items()) {
    (void)v;
    if (!common.count(k) && !(chat ? chat_only : completions_only).count(k))
      bad(k, "unrecognized request argument supplied: " + k);
  }
  CompletionRequest r;
  r.chat = chat;
  r.sampling.temp = 1.f, r.sampling.top_k = 0, r.sampling.top_p = 1.f, r.sampling.min_p = 0.f;
  if (body.contains("model")) {
    if (!body["model"].is_string()) bad("model", "'model' must be a string");
    r.model = body["model"].get<std::string>();
  }
  if (chat) {
    if (!body.contains("messages")) bad("messages", "'messages' is required");
    const auto& m = body["messages"];
    if (!m.is_array() || m.empty()) bad("messages", "'messages' must be a non-empty array");
    for (size_t i = 0; i < m.size(); ++i) {
      const std::string k = "messages[" + std::to_string(i) + "]";
      if (!m[i].is_object()) bad(k, "'" + k + "' must be an object");
      if (!m[i].contains("role") || !m[i]["role"].is_string()) bad(k + ".role", "'" + k + ".role' must be a string");
      const std::string role = m[i]["role"];
      static const std::set<std::string> roles = {"system", "developer", "user", "assistant", "tool"};
      if (!roles.count(role)) bad(k + ".role", "'" + k + ".role' must be one of system, developer, user, assistant, tool; got '" + role + "'");
      if (!m[i].contains("content") && role != "assistant") bad(k + ".content", "'" + k + ".content' is required");
      r.messages.push_back({role == "developer" ? "system" : role,
                            message_content(m[i].contains("content") ? m[i]["content"] : json(nullptr), k + ".content")});
    }
  } else {
    if (!body.contains("prompt")) bad("prompt", "'prompt' is required");
    const auto& p = body["prompt"];
    if (p.is_string()) {
      r.prompts.push_back(p.get<std::string>()), r.prompt_ids.emplace_back();
    } else if (p.is_array() && !p.empty() && p[0].is_number()) {
      r.prompts.emplace_back(), r.prompt_ids.push_back(token_ids(p, "prompt"));
    } else if (p.is_array() && !p.empty()) {
      for (const auto& e : p) {
        if (e.is_string())
          r.prompts.push_back(e.get<std::string>()), r.prompt_ids.emplace_back();
        else if (e.is_array())
          r.prompts.emplace_back(), r.prompt_ids.push_back(token_ids(e, "prompt"));
        else
          bad("prompt", "'prompt' entries must be strings or token arrays, got " + std::string(type_name(e)));
      }
    } else {
      bad("prompt", "'prompt' must be a string, an array of strings, or token ids");
    }
    if (body.contains("echo")) r.echo = boolean(body["echo"], "echo");
    if (body.contains("suffix") && !body["suffix"].is_null()) bad("suffix", "'suffix' (insertion) is not supported");
    r.max_tokens = 16;  // the API's default for completions
  }
  for (const char* k : {"max_tokens", "max_completion_tokens"})
    if (body.contains(k) && !body[k].is_null()) r.max_tokens = integer(body[k], k, 0, INT32_MAX);
  if (body.contains("temperature") && !body["temperature"].is_null())
    r.sampling.temp = float(number(body["temperature"], "temperature", 0, 2));
  if (body.contains("top_p") && !body["top_p"].is_null()) {
    r.sampling.top_p = float(number(body["top_p"], "top_p", 0, 1));
    if (r.sampling.top_p <= 0) bad("top_p", "'top_p' must be greater than 0");
  }
  if (body.contains("top_k") && !body["top_k"].is_null())
    r.sampling.top_k = int32_t(integer(body["top_k"], "top_k", -1, INT32_MAX));
  if (body.contains("min_p") && !body["min_p"].is_null()) r.sampling.min_p = float(number(body["min_p"], "min_p", 0, 1));
  if (body.contains("repeat_penalty") && !body["repeat_penalty"].is_null())
    r.sampling.repeat_penalty = float(number(body["repeat_penalty"], "repeat_penalty", 1e-6, 100));
  if (body.contains("presence_penalty") && !body["presence_penalty"].is_null())
    r.sampling.presence_penalty = float(number(body["presence_penalty"], "presence_penalty", -2, 2));
  if (body.contains("frequency_penalty") && !body["frequency_penalty"].is_null())
    r.sampling.frequency_penalty = float(number(body["frequency_penalty"], "frequency_penalty", -2, 2));
  if (body.contains("n") && !body["n"].is_null()) r.n = int32_t(integer(body["n"], "n", 1, max_n));
  if (body.contains("best_of") && !body["best_of"].is_null() && integer(body["best_of"], "best_of", 1, max_n) != r.n)
    bad("best_of", "'best_of' other than n is not supported");
  if (body.contains("seed") && !body["seed"].is_null()) {
    const auto& s = body["seed"];
    if (!s.is_number_integer()) bad("seed", "'seed' must be an integer");
    r.sampling.seed = s.is_number_unsigned() ? s.get<uint64_t>() : uint64_t(s.get<int64_t>());
    r.seeded = true;
  }
  if (body.contains("stop") && !body["stop"].is_null()) {
    const auto& s = body["stop"];
    if (s.is_string()) {
      r.stop.push_back(s.get<std::string>());
    } else if (s.is_array()) {
      if (s.size() > 4) bad("stop", "'stop' takes at most 4 sequences, got " + std::to_string(s.size()));
      for (const auto& e : s) {
        if (!e.is_string()) bad("stop", "'stop' entries must be strings");
        r.stop.push_back(e.get<std::string>());
      }
    } else {
      bad("stop", "'stop' must be a string or an array of strings");
    }
    for (const auto& e : r.stop)
      if (e.empty()) bad("stop", "'stop' sequences must not be empty");
  }
  if (body.contains("stream") && !body["stream"].is_null()) r.stream = boolean(body["stream"], "stream");
  if (body.contains("stream_options") && !body["stream_options"].is_null()) {
    const auto& so = body["stream_options"];
    if (!r.stream) bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
    if (!so.is_object()) bad("stream_options", "'stream_options' must be an object");
    for (const auto& [k, v] : so.items()) {
      if (k != "include_usage") bad("stream_options." + k, "unrecognized stream option: " + k);
      r.include_usage = boolean(v, "stream_options.include_usage");
    }
  }
  if (body.contains("logprobs") && !body["logprobs"].is_null()) {
    if (chat) {
      if (boolean(body["logprobs"], "logprobs")) r.logprobs = 0;
    } else {
      r.logprobs = int32_t(integer(body["logprobs"], "logprobs", 0, 20));
    }
  }
  if (chat && body.contains("top_logprobs") && !body["top_logprobs"].is_null()) {
    if (r.logprobs < 0) bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    r.logprobs = int32_t(integer(body["top_logprobs"], "top_logprobs", 0, 20));
  }
  if (body.contains("logit_bias") && !body["logit_bias"].is_null()) {
    if (!body["logit_bias"].is_object() || !body["logit_bias"].empty())
      bad("logit_bias", "'logit_bias' is not supported");
  }
  if (body.contains("user") && !body["user"].is_null() && !body["user"].is_string()) bad("user", "'user' must be a string");
  if (body.contains("response_format") && !body["response_format"].is_null()) {
    const auto& rf = body["response_format"];
    if (!rf.is_object() || !rf.contains("type") || !rf["type"].is_string())
      bad("response_format", "'response_format' must be an object with a string 'type'");
    const std::string t = rf["type"];
    if (t == "json_object") {
      r.grammar = kJsonGrammar;
    } else if (t == "json_schema") {
      if (!rf.contains("json_schema") || !rf["json_schema"].is_object() || !rf["json_schema"].contains("schema"))
        bad("response_format.json_schema", "'response_format.json_schema.schema' is required for type json_schema");
      try {
        r.grammar = json_schema_to_gbnf(rf["json_schema"]["schema"].dump(), "response_format.json_schema.schema");
      } catch (const Error& e) {
        bad("response_format.json_schema", e.what());
      }
    } else if (t != "text") {
      bad("response_format.type", "'response_format.type' must be text, json_object or json_schema; got '" + t + "'");
    }
  }
  if (body.contains("grammar") && !body["grammar"].is_null()) {
    if (!body["grammar"].is_string()) bad("grammar", "'grammar' must be a GBNF string");
    if (!r.grammar.empty()) bad("grammar", "give either 'grammar' or a JSON 'response_format', not both");
    r.grammar = body["grammar"].get<std::string>();
  }
  return r;
}

json usage_json(const Usage& u) {
  return json{{"prompt_tokens", u.prompt},
              {"completion_tokens", u.completion},
              {"total_tokens", u.prompt + u.completion},
              {"prompt_tokens_details", {{"cached_tokens", u.cached}}}};
}

json logprobs_json(const std::vector<TokenLogprob>& lps, const Tokenizer& tok, bool chat, int64_t text_offset) {
  const auto bytes = [](const std::string& s) {
    json a = json::array();
    for (unsigned char c : s) a.push_back(int(c));
    return a;
  };
  if (chat) {
    json content = json::array();
    for (const auto& lp : lps) {
      const std::string t = tok.token_bytes(lp.id);
      json top = json::array();
      for (const auto& [id, l] : lp.top) {
        const std::string s = tok.token_bytes(id);
        top.push_back({{"token", s}, {"logprob", l}, {"bytes", bytes(s)}});
      }
      content.push_back({{"token", t}, {"logprob", lp.logprob}, {"bytes", bytes(t)}, {"top_logprobs", top}});
    }
    return json{{"content", content}};
  }
  json tokens = json::array(), token_lps = json::array(), tops = json::array(), offsets = json::array();
  for (const auto& lp : lps) {
    const std::string t = tok.token_bytes(lp.id);
    tokens.push_back(t);
    token_lps.push_back(lp.logprob);
    json top = json::object();
    for (const auto& [id, l] : lp.top) top[tok.token_bytes(id)] = l;
    tops.push_back(top);
    offsets.push_back(text_offset);
    text_offset += int64_t(t.size());
  }
  return json{{"tokens", tokens}, {"token_logprobs", token_lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

}  // namespace tessera::serve
