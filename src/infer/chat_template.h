// Chat templates: a conversation (role, content messages) rendered into the
// prompt text the model was tuned on. Today: built-in formats only (chatml);
// a model whose own template (GGUF tokenizer.chat_template or
// tokenizer_config.json) is Jinja source is served with chatml and a warning
// until the Jinja interpreter lands.
#pragma once
#include <string>
#include <vector>

namespace tessera {

struct ChatMessage {
  std::string role;  // system, user, assistant, tool
  std::string content;
};

class ChatTemplate {
 public:
  // A built-in format by name: "chatml". Error naming the choices otherwise.
  static ChatTemplate builtin(const std::string& name);
  // The template for a model's Jinja source ("" when it has none): chatml, with a
  // warning on stderr when the model names a template that is not interpreted.
  static ChatTemplate for_model(const std::string& jinja_source);

  // The prompt for msgs; add_generation_prompt appends the assistant's header.
  std::string apply(const std::vector<ChatMessage>& msgs, bool add_generation_prompt) const;
  const std::string& name() const { return name_; }

 private:
  std::string name_;
};

}  // namespace tessera
