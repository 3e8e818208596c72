#include "infer/json_schema.h"

#include <array>
#include <cctype>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "core/error.h"
#include "infer/grammar.h"

namespace tessera {

namespace {

using json = nlohmann::ordered_json;

// The rules a schema grammar uses besides JSON's own (kJsonRules): string formats.
const char* kFormats = R"(date ::= [0-9]{4} "-" ("0" [1-9] | "1" [0-2]) "-" ("0" [1-9] | [1-2] [0-9] | "3" [0-1])
time ::= ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]+)? ("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])
hex ::= [0-9a-fA-F]
)";

// A GBNF string literal matching exactly the UTF-8 text s.
std::string literal(const std::string& s) {
  std::string out = "\"";
  for (const unsigned char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += char(c);
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02X", c);
      out += b;
    } else out += char(c);
  }
  return out + "\"";
}

class Converter {
 public:
  Converter(const json& root, std::string where) : root_(root), where_(std::move(where)) {}

  std::string run() {
    rules_["root"] = visit(root_, "#", "root");
    std::string out = std::string(kJsonRules) + kFormats;
    for (const auto& [name, body] : rules_) out += name + " ::= " + body + "\n";
    return out;
  }

 private:
  const json& root_;
  std::string where_;
  std::map<std::string, std::string> rules_;
  std::map<std::string, std::string> refs_;  // "$ref" target -> rule name
  int counter_ = 0;

  [[noreturn]] void error(const std::string& path, const std::string& what) const {
    fail(where_, ": ", path, ": ", what);
  }
  std::string fresh(const std::string& hint) {
    std::string n;
    for (const char c : hint) n += (std::isalnum(static_cast<unsigned char>(c)) || c == '-') ? c : '-';
    if (n.empty() || !std::isalpha(static_cast<unsigned char>(n[0]))) n = "r-" + n;
    std::string name = n;
    static const std::set<std::string> kTaken{"root", "value", "object", "array", "char", "string", "integer",
                                              "number", "boolean", "null", "ws", "date", "time", "hex"};
    while (rules_.count(name) || kTaken.count(name))
      name = n + "-" + std::to_string(++counter_);
    rules_[name] = "";  // reserved
    return name;
  }
  // The rule name for schema s (a new rule holding its body).
  std::string named(const json& s, const std::string& path, const std::string& hint) {
    const std::string n = fresh(hint);
    rules_[n] = visit(s, path, n);
    return n;
  }
  std::string resolve_ref(const std::string& ref, const std::string& path) {
    auto it = refs_.find(ref);
    if (it != refs_.end()) return it->second;
    std::string key;
    if (ref.rfind("#/$defs/", 0) == 0) key = "$defs";
    else if (ref.rfind("#/definitions/", 0) == 0) key = "definitions";
    else if (ref == "#") key = "";
    else error(path, "$ref '" + ref + "' is not supported (only #, #/$defs/NAME and #/definitions/NAME)");
    const json* target = &root_;
    std::string name = "root";
    if (!key.empty()) {
      name = ref.substr(key.size() + 3);
      if (!root_.contains(key) || !root_[key].contains(name)) error(path, "$ref '" + ref + "' names no definition");
      target = &root_[key][name];
    } else {
      return refs_[ref] = "root";
    }
    const std::string rule = fresh(name);
    refs_[ref] = rule;  // before visiting: recursive references resolve to it
    rules_[rule] = visit(*target, ref, rule);
    return rule;
  }

  std::string visit(const json& s, const std::string& path, const std::string& self) {
    if (s.is_boolean()) {
      if (!s.get<bool>()) error(path, "the schema 'false' accepts nothing");
      return "value";
    }
    if (!s.is_object()) error(path, "a schema must be an object or a boolean");
    static const std::set<std::string> kIgnored{"title", "description", "default", "examples", "$schema",
                                                "$id", "$comment", "$defs", "definitions", "readOnly", "writeOnly",
                                                "deprecated"};
    static const std::set<std::string> kKnown{"type", "properties", "required", "additionalProperties", "items",
                                              "minItems", "maxItems", "minLength", "maxLength", "format", "enum",
                                              "const", "anyOf", "oneOf", "$ref"};
    for (const auto& [k, v] : s.items())
      if (!kIgnored.count(k) && !kKnown.count(k))
        error(path, "keyword '" + k + "' is not supported (see --help of --json-schema for what is)");
    if (s.contains("$ref")) return resolve_ref(s["$ref"].get<std::string>(), path);
    if (s.contains("const")) return literal(s["const"].dump()) + " ws";
    if (s.contains("enum")) {
      if (!s["enum"].is_array() || s["enum"].empty()) error(path + "/enum", "must be a non-empty array");
      std::string alts;
      for (const auto& v : s["enum"]) alts += (alts.empty() ? "" : " | ") + literal(v.dump());
      return "(" + alts + ") ws";
    }
    for (const char* k : {"anyOf", "oneOf"})
      if (s.contains(k)) {
        if (!s[k].is_array() || s[k].empty()) error(path + "/" + k, "must be a non-empty array");
        std::string alts;
        for (size_t i = 0; i < s[k].size(); ++i)
          alts += (i ? " | " : "") + named(s[k][i], path + "/" + k + "/" + std::to_string(i), self + "-" + std::to_string(i));
        return "(" + alts + ")";
      }
    if (!s.contains("type")) {
      if (s.contains("properties")) return object(s, path, self);
      if (s.contains("items")) return array(s, path, self);
      return "value";
    }
    const json& t = s["type"];
    if (t.is_array()) {
      std::string alts;
      for (size_t i = 0; i < t.size(); ++i) {
        json one = s;
        one["type"] = t[i];
        alts += (i ? " | " : "") + named(one, path, self + "-" + t[i].get<std::string>());
      }
      return "(" + alts + ")";
    }
    if (!t.is_string()) error(path + "/type", "must be a string or an array of strings");
    const std::string type = t.get<std::string>();
    if (type == "object") return object(s, path, self);
    if (type == "array") return array(s, path, self);
    if (type == "string") return string(s, path);
    if (type == "integer" || type == "number" || type == "boolean" || type == "null") return type;
    error(path + "/type", "unknown type '" + type + "'");
  }

  std::string string(const json& s, const std::string& path) {
    if (s.contains("format")) {
      const std::string f = s["format"].get<std::string>();
      if (s.contains("minLength") || s.contains("maxLength")) error(path, "minLength / maxLength with a format");
      if (f == "date") return "\"\\\"\" date \"\\\"\" ws";
      if (f == "time") return "\"\\\"\" time \"\\\"\" ws";
      if (f == "date-time") return "\"\\\"\" date \"T\" time \"\\\"\" ws";
      if (f == "uuid") return "\"\\\"\" hex{8} \"-\" hex{4} \"-\" hex{4} \"-\" hex{4} \"-\" hex{12} \"\\\"\" ws";
      error(path + "/format", "format '" + f + "' is not supported (date, time, date-time, uuid)");
    }
    const int64_t lo = s.value("minLength", int64_t(0));
    const int64_t hi = s.contains("maxLength") ? s["maxLength"].get<int64_t>() : -1;
    if (lo < 0 || (hi >= 0 && hi < lo)) error(path, "minLength / maxLength out of order");
    if (lo == 0 && hi < 0) return "string";
    return "\"\\\"\" char{" + std::to_string(lo) + "," + (hi >= 0 ? std::to_string(hi) : "") + "} \"\\\"\" ws";
  }

  std::string array(const json& s, const std::string& path, const std::string& self) {
    const std::string item = s.contains("items") ? named(s["items"], path + "/items", self + "-item") : "value";
    const int64_t lo = s.value("minItems", int64_t(0));
    const int64_t hi = s.contains("maxItems") ? s["maxItems"].get<int64_t>() : -1;
    if (lo < 0 || (hi >= 0 && hi < lo)) error(path, "minItems / maxItems out of order");
    if (hi == 0) return "\"[\" ws \"]\" ws";
    const std::string more = "(\",\" ws " + item + "){" + std::to_string(std::max<int64_t>(lo - 1, 0)) + "," +
                             (hi >= 0 ? std::to_string(hi - 1) : "") + "}";
    const std::string body = item + " " + more;
    return "\"[\" ws " + (lo == 0 ? "(" + body + ")?" : body) + " \"]\" ws";
  }

  std::string object(const json& s, const std::string& path, const std::string& self) {
    std::vector<std::pair<std::string, std::string>> props;  // key, value rule
    const json props_j = s.value("properties", json::object());
    std::set<std::string> required;
    if (s.contains("required"))
      for (const auto& r : s["required"]) required.insert(r.get<std::string>());
    for (const auto& r : required)
      if (!props_j.contains(r)) error(path + "/required", "'" + r + "' is required but has no entry in properties");
    for (const auto& [k, v] : props_j.items()) props.emplace_back(k, named(v, path + "/properties/" + k, self + "-" + k));
    // Extra keys: additionalProperties true (any value) or a schema for their values.
    std::string extra;
    if (s.contains("additionalProperties") && !(s["additionalProperties"].is_boolean() && !s["additionalProperties"].get<bool>()))
      extra = s["additionalProperties"].is_boolean() ? "value"
                                                     : named(s["additionalProperties"], path + "/additionalProperties", self + "-extra");
    // tail(i, first): the key-value pairs from property i on, in order; first: none written yet.
    const size_t n = props.size();
    std::vector<std::array<std::string, 2>> tail(n + 1);
    for (size_t i = n + 1; i-- > 0;)
      for (int first = 0; first < 2; ++first) tail[i][size_t(first)] = fresh(self + "-kv" + std::to_string(i) + (first ? "f" : ""));
    for (size_t i = n + 1; i-- > 0;)
      for (int first = 0; first < 2; ++first) {
        const std::string sep = first ? "" : "\",\" ws ";
        std::string body;
        if (i == n) {
          const std::string kv = "string \":\" ws " + extra;
          body = extra.empty() ? "" : first ? "(" + kv + " (\",\" ws " + kv + ")*)?" : "(\",\" ws " + kv + ")*";
        } else {
          const std::string kv = sep + literal("\"" + props[i].first + "\"") + " ws \":\" ws " + props[i].second + " " + tail[i + 1][0];
          body = required.count(props[i].first) ? kv : "(" + kv + ") | " + tail[i + 1][size_t(first)];
        }
        rules_[tail[i][size_t(first)]] = body;
      }
    return "\"{\" ws " + tail[0][1] + " \"}\" ws";
  }
};

}  // namespace

std::string json_schema_to_gbnf(const std::string& schema_json, const std::string& where) {
  json schema;
  try {
    schema = json::parse(schema_json);
  } catch (const json::exception& e) {
    fail(where, ": not valid JSON: ", e.what());
  }
  try {
    return Converter(schema, where).run();
  } catch (const json::exception& e) {
    fail(where, ": bad schema: ", e.what());
  }
}

}  // namespace tessera
