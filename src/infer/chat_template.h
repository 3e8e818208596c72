// Chat templates: a conversation (role, content messages) rendered into the
// prompt text the model was tuned on, by the model's own Jinja template (GGUF
// tokenizer.chat_template or tokenizer_config.json) through infer/jinja.h, or
// a built-in one (chatml) for models without a template.
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace tessera {

namespace jinja {
class Template;
}

struct ChatMessage {
  std::string role;  // system, user, assistant, tool
  std::string content;
};

class ChatTemplate {
 public:
  // A built-in template by name: "chatml". Error naming the choices otherwise.
  static ChatTemplate builtin(const std::string& name);
  // A Jinja template (Error "chat template line N: ..." when it does not parse).
  // bos / eos: the bos_token and eos_token strings it sees.
  static ChatTemplate from_source(const std::string& jinja_source, const std::string& bos, const std::string& eos,
                                  const std::string& name = "the model's");
  // The model's template, or chatml when jinja_source is empty.
  static ChatTemplate for_model(const std::string& jinja_source, const std::string& bos, const std::string& eos);

  // The prompt for msgs; add_generation_prompt opens the assistant's turn. When
  // the template rejects a system role, a leading system message is merged into
  // the first user message ("SYSTEM\n\nUSER"), as llama.cpp does. Error naming the
  // template line when the template raises or fails.
  std::string apply(const std::vector<ChatMessage>& msgs, bool add_generation_prompt) const;
  bool supports_system() const { return system_ok_; }
  const std::string& name() const { return name_; }

 private:
  std::shared_ptr<const jinja::Template> t_;
  std::string name_, bos_, eos_;
  bool system_ok_ = true;
  std::string render(const std::vector<ChatMessage>& msgs, bool gen) const;
};

}  // namespace tessera
