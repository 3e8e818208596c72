// The OpenAI API's request and response shapes for /v1/completions and
// /v1/chat/completions: parsing with validation (every bad value an ApiError
// naming the field, with its HTTP status) and the JSON of responses and
// streamed chunks.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "infer/chat_template.h"
#include "infer/sampler.h"
#include "serve/engine.h"

namespace tessera::serve {

struct ApiError : Error {
  ApiError(int status_, std::string msg, std::string param_ = {}, std::string type_ = "invalid_request_error")
      : Error(std::move(msg)), status(status_), param(std::move(param_)), type(std::move(type_)) {}
  int status;
  std::string param, type;
};
// {"error": {"message", "type", "param", "code"}}
nlohmann::json error_json(const std::string& message, const std::string& type, const std::string& param, int status);

struct CompletionRequest {
  bool chat = false;
  std::string model;
  // completions: one entry per prompt (text, or token ids when given as ids);
  // chat: the messages (the prompt is rendered by the chat template).
  std::vector<std::string> prompts;
  std::vector<std::vector<int32_t>> prompt_ids;  // parallel to prompts: given ids (else empty)
  std::vector<ChatMessage> messages;
  int64_t max_tokens = -1;      // -1: until the context is full
  int32_t n = 1;
  bool stream = false, include_usage = false;
  int32_t logprobs = -1;  // top alternatives per token; -1: none
  bool echo = false;
  std::vector<std::string> stop;
  SamplerParams sampling;
  bool seeded = false;
  std::string grammar;  // GBNF (response_format or the grammar extension), "" for none
};

// Parses and validates a request body. Unknown fields are rejected (400), as
// OpenAI's API does; tessera's extensions: top_k, min_p, repeat_penalty, grammar.
CompletionRequest parse_completion(const nlohmann::json& body, bool chat, int64_t max_n);

// Response JSON. choice_text/finish per choice index; usage totals.
struct Usage {
  int64_t prompt = 0, completion = 0, cached = 0;
};
nlohmann::json usage_json(const Usage& u);
// logprobs of one choice in the endpoint's format (completions: tokens /
// token_logprobs / top_logprobs / text_offset; chat: content[]).
nlohmann::json logprobs_json(const std::vector<TokenLogprob>& lps, const Tokenizer& tok, bool chat, int64_t text_offset);

}  // namespace tessera::serve
