// A Jinja2 interpreter for the subset chat templates use, matching the
// reference implementation @huggingface/jinja (what transformers.js and the Hub
// run): the template is preprocessed with trim_blocks and lstrip_blocks and
// its final newline dropped; values print as that implementation prints them
// (true/false, JSON for lists and objects).
//
// Statements: if / elif / else, for (with loop.*, an inline if filter, else,
// break, continue, tuple unpacking), set (names, namespace attributes, block
// set), macro, comments, whitespace control. Expressions: literals, lists,
// dicts, attribute and item access, slices, calls with keyword arguments,
// filters, tests (is / is not), in / not in, arithmetic, ~, and / or / not,
// conditional expressions. Globals: range, namespace, raise_exception,
// strftime_now, dict. Anything else is an Error naming the template line.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace tessera::jinja {

struct Value;
using Array = std::vector<Value>;
using Object = std::vector<std::pair<std::string, Value>>;  // insertion order, as Python dicts
struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};
using Func = std::function<Value(Args&)>;

struct Value {
  enum Kind { Undefined, None, Bool, Int, Float, String, List, Dict, Callable };
  Kind kind = Undefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::shared_ptr<Array> a;   // shared: lists and dicts have reference semantics
  std::shared_ptr<Object> o;
  std::shared_ptr<Func> fn;
  bool is_namespace = false;

  Value() = default;
  static Value none() { Value v; v.kind = None; return v; }
  Value(bool x) : kind(Bool), b(x) {}
  Value(int64_t x) : kind(Int), i(x) {}
  Value(int x) : kind(Int), i(x) {}
  Value(double x) : kind(Float), f(x) {}
  Value(std::string x) : kind(String), s(std::move(x)) {}
  Value(const char* x) : kind(String), s(x) {}
  static Value list(Array xs = {}) { Value v; v.kind = List; v.a = std::make_shared<Array>(std::move(xs)); return v; }
  static Value dict(Object xs = {}) { Value v; v.kind = Dict; v.o = std::make_shared<Object>(std::move(xs)); return v; }
  static Value func(Func f) { Value v; v.kind = Callable; v.fn = std::make_shared<Func>(std::move(f)); return v; }

  bool truthy() const;
  // The member named key of a dict (Undefined when absent or not a dict).
  Value get(const std::string& key) const;
  void set(const std::string& key, Value v);  // dicts only
};

Value from_json(const nlohmann::json& j);
Value from_json(const nlohmann::ordered_json& j);  // keeps the objects' key order
// JSON text as the reference's tojson writes it (", " and ": " separators
// without indent; "," and ": " with it; non-ASCII kept).
std::string to_json(const Value& v, int indent = -1, int depth = 0);
// How {{ v }} prints v.
std::string to_string(const Value& v);

struct Node;

class Template {
 public:
  // Parses source; Error "chat template line N: ..." on a syntax error or an
  // unsupported construct.
  explicit Template(const std::string& source);
  // Renders with the given variables (a dict). Error naming the template line
  // on a runtime error, and with the message of raise_exception().
  std::string render(const Value& vars) const;

 private:
  std::shared_ptr<const Node> root_;
};

}  // namespace tessera::jinja
