// JSON Schema -> GBNF (infer/json_schema.h): strings a schema accepts and
// rejects; unsupported keywords are errors; and generation under a schema
// with a random-weight model yields JSON that validates (checked by a small
// validator of the supported subset, written independently of the converter).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <regex>

#include "cli_util.h"
#include "core/error.h"
#include "formats/load.h"
#include "infer/generate.h"
#include "infer/grammar.h"
#include "infer/json_schema.h"
#include "model/synthetic.h"
#include "model_test_util.h"
#include "tokenizer/tokenizer.h"

using namespace tessera;
using namespace tessera::test;
using ojson = nlohmann::ordered_json;

namespace {

Grammar schema_grammar(const std::string& schema) { return Grammar::parse(json_schema_to_gbnf(schema, "schema"), "schema"); }

bool accepts(const Grammar& g, const std::string& s) {
  GrammarState st(g);
  return st.accept(s) && st.can_end();
}

std::string error_of(const std::string& schema) {
  try {
    json_schema_to_gbnf(schema, "s.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// v valid under s (the subset the converter supports), root for $refs.
bool valid(const ojson& v, const ojson& s, const ojson& root) {
  if (s.is_boolean()) return s.get<bool>();
  if (s.contains("$ref")) {
    const std::string r = s["$ref"];
    return valid(v, root["$defs"][r.substr(8)], root);
  }
  if (s.contains("const")) return v == s["const"];
  if (s.contains("enum")) return std::find(s["enum"].begin(), s["enum"].end(), v) != s["enum"].end();
  if (s.contains("anyOf")) {
    for (const auto& a : s["anyOf"])
      if (valid(v, a, root)) return true;
    return false;
  }
  if (!s.contains("type")) return true;
  const std::string t = s["type"];
  if (t == "null") return v.is_null();
  if (t == "boolean") return v.is_boolean();
  if (t == "integer") return v.is_number_integer();
  if (t == "number") return v.is_number();
  if (t == "string") {
    if (!v.is_string()) return false;
    const std::string str = v;
    if (s.contains("format") && s["format"] == "date") return std::regex_match(str, std::regex("[0-9]{4}-[0-9]{2}-[0-9]{2}"));
    const size_t n = size_t(std::count_if(str.begin(), str.end(), [](char c) { return (c & 0xC0) != 0x80; }));
    return n >= s.value("minLength", size_t(0)) && n <= s.value("maxLength", size_t(1) << 30);
  }
  if (t == "array") {
    if (!v.is_array() || v.size() < s.value("minItems", size_t(0)) || v.size() > s.value("maxItems", size_t(1) << 30))
      return false;
    for (const auto& x : v)
      if (s.contains("items") && !valid(x, s["items"], root)) return false;
    return true;
  }
  if (t == "object") {
    if (!v.is_object()) return false;
    for (const auto& r : s.value("required", ojson::array()))
      if (!v.contains(r.get<std::string>())) return false;
    const ojson props = s.value("properties", ojson::object());
    for (const auto& [k, x] : v.items()) {
      if (props.contains(k)) {
        if (!valid(x, props[k], root)) return false;
      } else if (!s.value("additionalProperties", false)) {
        return false;
      }
    }
    return true;
  }
  return false;
}

const char* kPerson = R"({
  "type": "object",
  "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 8},
    "age": {"type": "integer"},
    "tags": {"type": "array", "items": {"enum": ["a", "b", 3]}, "minItems": 1, "maxItems": 3},
    "born": {"type": "string", "format": "date"},
    "pet": {"$ref": "#/$defs/pet"}
  },
  "required": ["name", "tags"],
  "$defs": {"pet": {"anyOf": [{"type": "null"}, {"type": "object", "properties": {"kind": {"const": "cat"}, "next": {"$ref": "#/$defs/pet"}}, "required": ["kind"]}]}}
})";

}  // namespace

TEST(JsonSchema, AcceptsAndRejects) {
  const Grammar g = schema_grammar(kPerson);
  EXPECT_TRUE(accepts(g, R"({"name": "Al", "tags": ["a"]})"));
  EXPECT_TRUE(accepts(g, R"({"name": "Al", "age": -4, "tags": ["a", 3, "b"], "born": "2020-02-29", "pet": {"kind": "cat", "next": {"kind": "cat"}}})"));
  EXPECT_TRUE(accepts(g, R"({"name": "Al", "tags": ["b"], "pet": null})"));
  EXPECT_FALSE(accepts(g, R"({"tags": ["a"]})"));                         // name required
  EXPECT_FALSE(accepts(g, R"({"name": "", "tags": ["a"]})"));             // minLength
  EXPECT_FALSE(accepts(g, R"({"name": "Abcdefghi", "tags": ["a"]})"));    // maxLength
  EXPECT_FALSE(accepts(g, R"({"name": "Al", "tags": []})"));              // minItems
  EXPECT_FALSE(accepts(g, R"({"name": "Al", "tags": ["a","a","a","a"]})"));  // maxItems
  EXPECT_FALSE(accepts(g, R"({"name": "Al", "tags": ["c"]})"));           // enum
  EXPECT_FALSE(accepts(g, R"({"name": "Al", "tags": ["a"], "x": 1})"));   // no additional properties
  EXPECT_FALSE(accepts(g, R"({"name": "Al", "age": 1.5, "tags": ["a"]})"));  // integer
  EXPECT_FALSE(accepts(g, R"({"tags": ["a"], "name": "Al"})"));           // properties in order
  EXPECT_FALSE(accepts(g, R"({"name": "Al", "tags": ["a"], "pet": {"kind": "dog"}})"));  // const
  const Grammar open = schema_grammar(R"({"type": "object", "properties": {"a": {"type": "boolean"}}, "additionalProperties": true})");
  EXPECT_TRUE(accepts(open, R"({"a": true, "b": [1]})"));
  EXPECT_TRUE(accepts(open, R"({"b": 1})"));
  const Grammar any = schema_grammar("{}");
  EXPECT_TRUE(accepts(any, "[1, \"x\", {\"y\": null}]"));
  const Grammar types = schema_grammar(R"({"type": ["number", "null"]})");
  EXPECT_TRUE(accepts(types, "2.5e3"));
  EXPECT_TRUE(accepts(types, "null"));
  EXPECT_FALSE(accepts(types, "\"2\""));
}

TEST(JsonSchema, UnsupportedKeywordsAreErrors) {
  EXPECT_NE(error_of(R"({"type": "string", "pattern": "^a$"})").find("keyword 'pattern'"), std::string::npos);
  EXPECT_NE(error_of(R"({"properties": {"a": {"not": {}}}})").find("#/properties/a"), std::string::npos);
  EXPECT_NE(error_of(R"({"type": "string", "format": "email"})").find("format 'email'"), std::string::npos);
  EXPECT_NE(error_of(R"({"$ref": "https://x/y.json"})").find("$ref"), std::string::npos);
  EXPECT_NE(error_of(R"({"$ref": "#/$defs/missing"})").find("names no definition"), std::string::npos);
  EXPECT_NE(error_of(R"({"type": "objekt"})").find("unknown type"), std::string::npos);
  EXPECT_NE(error_of("{not json").find("not valid JSON"), std::string::npos);
  EXPECT_NE(error_of(R"({"required": ["a"], "properties": {}})").find("'a' is required"), std::string::npos);
}

TEST(JsonSchema, GenerationValidates) {
  TESSERA_REQUIRE_SHARED("models/tok512.bin");
  RandomStories rs(78);
  const Tokenizer& tok = rs.tok;
  const TokenTrie& trie = rs.trie;
  Model& m = rs.m;
  KernelContext& ctx = rs.ctx;
  const ojson schema = ojson::parse(kPerson);
  const Grammar g = schema_grammar(kPerson);
  int complete = 0;
  for (uint64_t seed = 1; seed <= 16; ++seed) {
    GenerateParams gp;
    gp.n_predict = 300;
    gp.sampling.seed = seed, gp.sampling.temp = 1.f;
    gp.grammar = &g, gp.trie = &trie;
    std::string out;
    const GenerateStats st = generate(m, ctx, tok, {1}, gp, [&](std::string_view s) { out += s; });
    GrammarState gs(g);
    EXPECT_TRUE(gs.accept(out)) << out;
    if (st.stop_reason != "eos") continue;
    ++complete;
    ojson v;
    ASSERT_NO_THROW(v = ojson::parse(out)) << out;
    EXPECT_TRUE(valid(v, schema, schema)) << out;
  }
  EXPECT_GT(complete, 4);
}
