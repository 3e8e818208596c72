#include "infer/chat_template.h"

#include <cstdio>

#include "core/error.h"

namespace tessera {

ChatTemplate ChatTemplate::builtin(const std::string& name) {
  if (name != "chatml") fail("unknown chat template '", name, "' (built-in: chatml)");
  ChatTemplate t;
  t.name_ = name;
  return t;
}

ChatTemplate ChatTemplate::for_model(const std::string& jinja_source) {
  if (!jinja_source.empty())
    std::fprintf(stderr,
                 "tessera: warning: the model's own chat template (Jinja) is not interpreted yet; using chatml "
                 "(--chat-template picks a built-in)\n");
  return builtin("chatml");
}

std::string ChatTemplate::apply(const std::vector<ChatMessage>& msgs, bool add_generation_prompt) const {
  // chatml: <|im_start|>ROLE\nCONTENT<|im_end|>\n per message.
  std::string out;
  for (const auto& m : msgs) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

}  // namespace tessera
