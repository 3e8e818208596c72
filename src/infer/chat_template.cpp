#include "infer/chat_template.h"

#include "core/error.h"
#include "infer/jinja.h"

namespace tessera {

namespace {
const char* kChatML =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
}  // namespace

ChatTemplate ChatTemplate::builtin(const std::string& name) {
  if (name != "chatml") fail("unknown built-in chat template '", name, "' (built-in: chatml; or give a Jinja file)");
  return from_source(kChatML, "", "", name);
}

ChatTemplate ChatTemplate::from_source(const std::string& src, const std::string& bos, const std::string& eos,
                                       const std::string& name) {
  ChatTemplate t;
  t.t_ = std::make_shared<const jinja::Template>(src);
  t.name_ = name, t.bos_ = bos, t.eos_ = eos;
  // Does a system message survive? (Templates without a system role raise or drop it.)
  const std::string probe = "tessera-system-probe-7f3a";
  try {
    t.system_ok_ = t.render({{"system", probe}, {"user", "x"}}, false).find(probe) != std::string::npos;
  } catch (const Error&) {
    t.system_ok_ = false;
  }
  return t;
}

ChatTemplate ChatTemplate::for_model(const std::string& src, const std::string& bos, const std::string& eos) {
  if (src.empty()) return builtin("chatml");
  return from_source(src, bos, eos);
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& msgs, bool gen) const {
  jinja::Array ms;
  for (const auto& m : msgs) ms.push_back(jinja::Value::dict({{"role", jinja::Value(m.role)}, {"content", jinja::Value(m.content)}}));
  const jinja::Value vars = jinja::Value::dict({{"messages", jinja::Value::list(std::move(ms))},
                                               {"add_generation_prompt", jinja::Value(gen)},
                                               {"bos_token", jinja::Value(bos_)},
                                               {"eos_token", jinja::Value(eos_)}});
  return t_->render(vars);
}

std::string ChatTemplate::apply(const std::vector<ChatMessage>& msgs, bool add_generation_prompt) const {
  if (system_ok_ || msgs.empty() || msgs[0].role != "system") return render(msgs, add_generation_prompt);
  std::vector<ChatMessage> merged(msgs.begin() + 1, msgs.end());
  if (!merged.empty() && merged[0].role == "user")
    merged[0].content = msgs[0].content + "\n\n" + merged[0].content;
  else
    merged.insert(merged.begin(), ChatMessage{"user", msgs[0].content});
  return render(merged, add_generation_prompt);
}

}  // namespace tessera
