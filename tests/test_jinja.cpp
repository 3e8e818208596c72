// The Jinja interpreter (infer/jinja.h): hand-checked templates, errors that
// name the line, and the 17 real chat templates of ../shared/chat-templates
// rendered for several conversations, compared byte for byte with the
// reference implementation @huggingface/jinja run under node.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "core/error.h"
#include "infer/chat_template.h"
#include "infer/jinja.h"

namespace tessera::test {
namespace {

using ojson = nlohmann::ordered_json;

std::string render(const std::string& t, const ojson& vars = ojson::object()) {
  return jinja::Template(t).render(jinja::from_json(vars));
}

TEST(Jinja, Basics) {
  EXPECT_EQ(render("Hello {{ name }}!", {{"name", "you"}}), "Hello you!");
  EXPECT_EQ(render("{% for x in xs %}{{ loop.index }}:{{ x }}{% if not loop.last %}, {% endif %}{% endfor %}", {{"xs", {"a", "b", "c"}}}),
            "1:a, 2:b, 3:c");
  // trim_blocks + lstrip_blocks, and whitespace control.
  EXPECT_EQ(render("{% if true %}\n  yes\n{% endif %}\n"), "  yes\n");
  EXPECT_EQ(render("a   {%- if true -%}   b   {%- endif -%}   c"), "abc");
  EXPECT_EQ(render("  {% set x = 1 %}\n{{ x }}"), "1");
  // Expressions.
  EXPECT_EQ(render("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ 2 ** 10 }} {{ 1 / 2 }} {{ 4 / 2 }}"), "3 -4 1 1024 0.5 2.0");
  EXPECT_EQ(render("{{ 'ab' ~ 3 ~ none }}|{{ 'x' if false }}|{{ 'y' if false else 'z' }}"), "ab3||z");
  EXPECT_EQ(render("{{ xs[1:] }} {{ xs[::-1] | join(',') }} {{ 'hello'[1:3] }} {{ xs[-1] }}", {{"xs", {1, 2, 3}}}),
            "[2, 3] 3,2,1 el 3");
  EXPECT_EQ(render("{{ 'a' in 'cat' }} {{ 2 not in [1, 2] }} {{ 'k' in {'k': 1} }} {{ true }}"), "true false true true");
  EXPECT_EQ(render("{{ m.content | trim | upper }}|{{ m.missing is defined }}|{{ m['role'] }}",
                   {{"m", {{"role", "user"}, {"content", "  hi  "}}}}),
            "HI|false|user");
  // Filters and methods templates use.
  EXPECT_EQ(render("{{ {'b': [1, 2.5, 'x\"y'], 'a': none} | tojson }}"), "{\"b\": [1, 2.5, \"x\\\"y\"], \"a\": null}");
  EXPECT_EQ(render("{{ [1, {'a': 2}] | tojson(indent=2) }}"), "[\n  1,\n  {\n    \"a\": 2\n  }\n]");
  EXPECT_EQ(render("{{ ms | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(' ') }}",
                   {{"ms", {{{"role", "user"}, {"content", "a"}}, {{"role", "bot"}, {"content", "b"}}, {{"role", "user"}, {"content", "c"}}}}}),
            "a c");
  EXPECT_EQ(render("{{ ' x '.strip() }}{{ 'a,b'.split(',') | length }}{{ 'Hi'.startswith('H') }}{{ 'abc'.replace('b', '') }}"),
            "x2trueac");
  EXPECT_EQ(render("{{ undefined_thing | default('dflt') }} {{ '' | default('e', true) }} {{ [3, 1, 2] | sort | list }}"),
            "dflt e [1, 2, 3]");
  EXPECT_EQ(render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", {{"d", {{"z", 1}, {"a", 2}}}}), "z=1;a=2;");
  // Scoping: set inside a loop does not leak; a namespace carries state out.
  EXPECT_EQ(render("{% set x = 0 %}{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set x = i %}{% set ns.n = ns.n + i %}"
                   "{% endfor %}{{ x }} {{ ns.n }}"),
            "0 3");
  // Block set, macros with defaults, loop else, break / continue, inline if.
  EXPECT_EQ(render("{% set b %}in{{ 1 + 1 }}{% endset %}{{ b }}"), "in2");
  EXPECT_EQ(render("{% macro m(a, b='B') %}<{{ a }}{{ b }}>{% endmacro %}{{ m(1) }}{{ m(2, b='c') }}"), "<1B><2c>");
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for i in range(10) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 4 %}{% break %}{% endif %}{{ i }}{% endfor %}"),
            "023");
  EXPECT_EQ(render("{% for i in range(6) if i is even %}{{ i }}{{ loop.length }}{% endfor %}"), "032343");  // loop.length counts the items that pass
  EXPECT_EQ(render("{# a comment #}{{ 'x' }}{#- trimmed -#}  y"), "xy");
}

TEST(Jinja, ErrorsNameTheLine) {
  const auto error_of = [](const std::string& t, const ojson& vars = ojson::object()) {
    try {
      render(t, vars);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_of("a\nb\n{{ x | nosuchfilter }}").find("line 3: unknown filter 'nosuchfilter'"), std::string::npos)
      << error_of("a\nb\n{{ x | nosuchfilter }}");
  EXPECT_NE(error_of("{% if x %}\n{% include 'y' %}{% endif %}").find("line 2: unsupported statement"), std::string::npos);
  EXPECT_NE(error_of("{% if x %}never closed").find("missing {% endif %}"), std::string::npos);
  EXPECT_NE(error_of("{{ 'unterminated }}").find("line 1: unterminated string"), std::string::npos);
  EXPECT_NE(error_of("\n\n{{ raise_exception('System role not supported') }}").find("line 3: the template raised an exception: System role not supported"),
            std::string::npos);
  // Lines stay right after trim_blocks removed newlines.
  EXPECT_NE(error_of("{% if true %}\n{% endif %}\n{% if true %}\n{{ 1 + 'a' }}{% endif %}").find("line 4:"), std::string::npos)
      << error_of("{% if true %}\n{% endif %}\n{% if true %}\n{{ 1 + 'a' }}{% endif %}");
}

// Conversations each template is rendered with.
std::vector<std::pair<std::string, ojson>> conversations() {
  const ojson tools = ojson::parse(R"([{"type": "function", "function": {"name": "get_weather",
      "description": "Get the current weather in a city",
      "parameters": {"type": "object", "properties": {"location": {"type": "string", "description": "City name"}},
                     "required": ["location"]}}}])");
  const ojson sys = {{"role", "system"}, {"content", "You are a helpful assistant."}};
  const ojson u1 = {{"role", "user"}, {"content", "Hello! What is 2+2?"}};
  const ojson a1 = {{"role", "assistant"}, {"content", "2+2 is 4."}};
  const ojson u2 = {{"role", "user"}, {"content", "And times three? Answer in ünïcödé."}};
  std::vector<std::pair<std::string, ojson>> out;
  const auto add = [&](const std::string& name, ojson msgs, bool gen, const ojson* t = nullptr) {
    ojson v = {{"messages", msgs}, {"add_generation_prompt", gen}, {"bos_token", "<s>"}, {"eos_token", "</s>"}};
    if (t) v["tools"] = *t;
    out.emplace_back(name, v);
  };
  add("user", ojson::array({u1}), true);
  add("system+user", ojson::array({sys, u1}), true);
  add("multi-turn", ojson::array({sys, u1, a1, u2}), true);
  add("no-system multi-turn, no generation prompt", ojson::array({u1, a1, u2}), false);
  add("tools", ojson::array({u1}), true, &tools);
  add("tools, multi-turn", ojson::array({sys, u1, a1, u2}), true, &tools);
  return out;
}

TEST(Jinja, RealChatTemplatesMatchTheReferenceImplementation) {
  TESSERA_REQUIRE_SHARED("chat-templates");
  const std::string npm = TESSERA_NPM_DIR;
  if (!std::filesystem::exists(npm + "/node_modules/@huggingface/jinja/dist/index.js") || std::system("node --version >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "the reference @huggingface/jinja is not installed under " << npm
                 << " (scripts/test.sh installs it: npm install --prefix BUILD/npm @huggingface/jinja)";
  std::vector<std::string> templates;
  for (const auto& e : std::filesystem::directory_iterator(shared_path("chat-templates")))
    if (e.path().extension() == ".jinja") templates.push_back(e.path().string());
  std::sort(templates.begin(), templates.end());
  ASSERT_GE(templates.size(), 17u);
  const auto convs = conversations();
  ojson cases = ojson::array();
  for (const auto& t : templates)
    for (const auto& [name, vars] : convs) cases.push_back({{"template", t}, {"vars", vars}});
  const std::string in = temp_path("jinja_cases.json"), out = temp_path("jinja_ref.json");
  std::ofstream(in) << cases.dump();
  const std::string cmd = "node " + q(std::string(TESSERA_SOURCE_DIR) + "/tests/jinja/render_reference.mjs") + " " + q(npm) +
                          " " + q(in) + " " + q(out);
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const ojson ref = ojson::parse(slurp(out));
  std::remove(in.c_str());
  std::remove(out.c_str());
  ASSERT_EQ(ref.size(), cases.size());
  int compared = 0, errors_both = 0;
  std::string rejected;
  for (size_t k = 0; k < cases.size(); ++k) {
    const std::string tname = std::filesystem::path(cases[k]["template"].get<std::string>()).filename().string();
    const std::string what = tname + " / " + convs[k % convs.size()].first;
    std::string mine, my_error;
    try {
      mine = jinja::Template(slurp(cases[k]["template"])).render(jinja::from_json(cases[k]["vars"]));
    } catch (const Error& e) {
      my_error = e.what();
    }
    // @huggingface/jinja 0.5 cannot unpack tuples in a for loop ("for a, b in [(1, 2)]"), which
    // Python's Jinja (and this interpreter) do: there tessera must render.
    if (ref[k].contains("error") && ref[k]["error"].get<std::string>().find("Cannot unpack non-iterable type: TupleValue") != std::string::npos) {
      EXPECT_TRUE(my_error.empty()) << what << ": " << my_error;
      continue;
    }
    if (ref[k].contains("error")) {
      EXPECT_FALSE(my_error.empty()) << what << ": the reference failed (" << ref[k]["error"] << ") but tessera rendered:\n" << mine;
      ++errors_both;
      rejected += "  " + what + ": " + ref[k]["error"].get<std::string>().substr(0, 80) + "\n";
      continue;
    }
    ASSERT_TRUE(my_error.empty()) << what << ": " << my_error;
    EXPECT_EQ(mine, ref[k]["output"].get<std::string>()) << what;
    ++compared;
  }
  EXPECT_GE(compared, 70);
  std::printf("[ jinja    ] %d renders identical to @huggingface/jinja, %d rejected by both:\n%s", compared, errors_both,
              rejected.c_str());
}

// A template in tokenizer_config.json beside a safetensors model (a string, or
// a list whose "default" entry is used) is the model's; convert carries it to
// GGUF tokenizer.chat_template and back.
TEST(ChatTemplate, FromTokenizerConfigJsonAndThroughConvert) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  const std::string model = shared_path("models/stories260K.bin"), tok = shared_path("models/tok512.bin");
  const std::string dir = temp_path("hf_chat"), gguf = temp_path("hf_chat.gguf"), msgs = temp_path("hf_msgs.json");
  std::filesystem::remove_all(dir);
  auto r = run_cli("convert " + q(model) + " " + q(dir) + " --tokenizer " + q(tok));
  ASSERT_EQ(r.code, 0) << r.err;
  std::ofstream(msgs) << R"([{"role": "user", "content": "Hi"}])";
  const std::string tmpl = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}";
  std::ofstream(dir + "/tokenizer_config.json") << ojson{{"chat_template", ojson::array({{{"name", "tool_use"}, {"template", "x"}},
                                                                                      {{"name", "default"}, {"template", tmpl}}})}}.dump();
  r = run_cli("chat-template -m " + q(dir) + " --tokenizer " + q(tok) + " --messages " + q(msgs));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "[user]Hi[assistant]");
  std::ofstream(dir + "/tokenizer_config.json") << ojson{{"chat_template", tmpl}}.dump();
  r = run_cli("convert " + q(dir) + " " + q(gguf) + " --tokenizer " + q(tok));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("chat-template -m " + q(gguf) + " --messages " + q(msgs) + " --no-generation-prompt");
  EXPECT_EQ(r.out, "[user]Hi");
  EXPECT_NE(run_cli("info -m " + q(gguf)).out.find("chat template:  Jinja"), std::string::npos);
  std::ofstream(dir + "/tokenizer_config.json") << "{ not json";
  r = run_cli("chat-template -m " + q(dir) + " --tokenizer " + q(tok) + " --messages " + q(msgs));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("tokenizer_config.json"), std::string::npos) << r.err;
  std::filesystem::remove_all(dir);
  std::remove(gguf.c_str());
  std::remove(msgs.c_str());
}

TEST(ChatTemplate, SystemMessageMergedWhereTheTemplateRejectsIt) {
  TESSERA_REQUIRE_SHARED("chat-templates/google-gemma-2-2b-it.jinja");
  const ChatTemplate t = ChatTemplate::from_source(slurp(shared_path("chat-templates/google-gemma-2-2b-it.jinja")), "<bos>", "<eos>");
  const std::string p = t.apply({{"system", "Be brief."}, {"user", "Hi"}}, true);
  EXPECT_EQ(p, "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_FALSE(t.supports_system());
}

}  // namespace
}  // namespace tessera::test
