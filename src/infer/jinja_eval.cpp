// Jinja templates: values, the renderer, filters, tests and globals.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>
#include <unordered_map>

#include "core/error.h"
#include "infer/jinja_ast.h"

namespace tessera::jinja {

bool Value::truthy() const {
  switch (kind) {
    case Undefined: case None: return false;
    case Bool: return b;
    case Int: return i != 0;
    case Float: return f != 0;
    case String: return !s.empty();
    case List: return !a->empty();
    case Dict: return is_namespace || !o->empty();
    case Callable: return true;
  }
  return false;
}

Value Value::get(const std::string& key) const {
  if (kind != Dict) return Value();
  for (const auto& [k, v] : *o)
    if (k == key) return v;
  return Value();
}

void Value::set(const std::string& key, Value v) {
  for (auto& [k, x] : *o)
    if (k == key) {
      x = std::move(v);
      return;
    }
  o->emplace_back(key, std::move(v));
}

namespace {
template <class J>
Value from_json_t(const J& j) {
  switch (j.type()) {
    case J::value_t::null: return Value::none();
    case J::value_t::boolean: return Value(j.template get<bool>());
    case J::value_t::number_integer:
    case J::value_t::number_unsigned: return Value(j.template get<int64_t>());
    case J::value_t::number_float: return Value(j.template get<double>());
    case J::value_t::string: return Value(j.template get<std::string>());
    case J::value_t::array: {
      Array a;
      for (const auto& e : j) a.push_back(from_json_t(e));
      return Value::list(std::move(a));
    }
    case J::value_t::object: {
      Object o;
      for (const auto& [k, v] : j.items()) o.emplace_back(k, from_json_t(v));
      return Value::dict(std::move(o));
    }
    default: return Value();
  }
}
}  // namespace

Value from_json(const nlohmann::json& j) { return from_json_t(j); }
Value from_json(const nlohmann::ordered_json& j) { return from_json_t(j); }

namespace {

std::string num(double f) {  // JavaScript's Number#toString for the usual range
  if (std::isnan(f)) return "NaN";
  if (std::isinf(f)) return f > 0 ? "Infinity" : "-Infinity";
  if (f == std::floor(f) && std::fabs(f) < 1e21) return std::to_string(int64_t(f));
  char b[64];
  auto r = std::to_chars(b, b + sizeof b, f);
  return std::string(b, r.ptr);
}

std::string json_string(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\b': o += "\\b"; break;
      case '\f': o += "\\f"; break;
      case '\n': o += "\\n"; break;
      case '\r': o += "\\r"; break;
      case '\t': o += "\\t"; break;
      default:
        if (c < 0x20) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04x", c);
          o += b;
        } else {
          o += char(c);
        }
    }
  }
  return o + "\"";
}

}  // namespace

std::string to_json(const Value& v, int indent, int depth) {
  switch (v.kind) {
    case Value::Undefined: return depth >= 0 ? "null" : "undefined";
    case Value::None: return "null";
    case Value::Bool: return v.b ? "true" : "false";
    case Value::Int: return std::to_string(v.i);
    case Value::Float: return num(v.f);
    case Value::String: return json_string(v.s);
    case Value::Callable: return "null";
    case Value::List:
    case Value::Dict: {
      const std::string item_sep = indent > 0 ? "," : ", ";
      const std::string pad = indent > 0 ? "\n" + std::string(size_t(indent * std::max(depth, 0)), ' ') : "";
      const std::string cpad = indent > 0 ? pad + std::string(size_t(indent), ' ') : "";
      std::vector<std::string> parts;
      if (v.kind == Value::List)
        for (const auto& e : *v.a) parts.push_back(to_json(e, indent, std::max(depth, 0) + 1));
      else
        for (const auto& [k, e] : *v.o) parts.push_back(json_string(k) + ": " + to_json(e, indent, std::max(depth, 0) + 1));
      const char* open = v.kind == Value::List ? "[" : "{";
      const char* close = v.kind == Value::List ? "]" : "}";
      if (parts.empty()) return std::string(open) + close;
      std::string o = open;
      for (size_t k = 0; k < parts.size(); ++k) o += (k ? item_sep : "") + cpad + parts[k];
      return o + pad + close;
    }
  }
  return "";
}

std::string to_string(const Value& v) {
  switch (v.kind) {
    case Value::Undefined: case Value::None: return "";
    case Value::Bool: return v.b ? "true" : "false";
    case Value::Int: return std::to_string(v.i);
    case Value::Float: {
      if (v.f == std::floor(v.f) && std::fabs(v.f) < 1e21) return num(v.f) + ".0";
      return num(v.f);
    }
    case Value::String: return v.s;
    case Value::List: case Value::Dict: return to_json(v, -1, -1);
    case Value::Callable: return "<function>";
  }
  return "";
}

namespace {

[[noreturn]] void err(int line, const std::string& msg) { fail("chat template line ", line, ": ", msg); }

bool equal(const Value& a, const Value& b) {
  const bool an = a.kind == Value::Int || a.kind == Value::Float, bn = b.kind == Value::Int || b.kind == Value::Float;
  if (an && bn) return (a.kind == Value::Int ? double(a.i) : a.f) == (b.kind == Value::Int ? double(b.i) : b.f);
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Undefined: case Value::None: return true;
    case Value::Bool: return a.b == b.b;
    case Value::String: return a.s == b.s;
    case Value::List:
      if (a.a->size() != b.a->size()) return false;
      for (size_t k = 0; k < a.a->size(); ++k)
        if (!equal((*a.a)[k], (*b.a)[k])) return false;
      return true;
    case Value::Dict: return a.o == b.o;
    default: return false;
  }
}

bool is_num(const Value& v) { return v.kind == Value::Int || v.kind == Value::Float; }
double as_num(const Value& v) { return v.kind == Value::Int ? double(v.i) : v.kind == Value::Float ? v.f : v.kind == Value::Bool ? v.b : 0; }

struct Scope {
  std::unordered_map<std::string, Value> vars;
  std::shared_ptr<Scope> parent;
  Value* find(const std::string& k) {
    for (Scope* s = this; s; s = s->parent.get()) {
      auto it = s->vars.find(k);
      if (it != s->vars.end()) return &it->second;
    }
    return nullptr;
  }
};
using ScopeP = std::shared_ptr<Scope>;

enum class Flow { Normal, Break, Continue };

// Python-style slice bounds.
void slice_bounds(int64_t n, const Value& a, const Value& b, int64_t step, int64_t& start, int64_t& stop) {
  const auto norm = [&](const Value& v, int64_t def) {
    if (v.kind != Value::Int) return def;
    int64_t x = v.i < 0 ? v.i + n : v.i;
    return step > 0 ? std::clamp<int64_t>(x, 0, n) : std::clamp<int64_t>(x, -1, n - 1);
  };
  start = norm(a, step > 0 ? 0 : n - 1);
  stop = norm(b, step > 0 ? n : -1);
}

Value arg(Args& a, size_t k, const char* name, Value def = Value()) {
  for (auto& [n, v] : a.kw)
    if (n == name) return v;
  return k < a.pos.size() ? a.pos[k] : def;
}

std::string strip_chars(const std::string& s, const Value& chars, bool left, bool right) {
  const std::string set = chars.kind == Value::String ? chars.s : std::string(" \t\n\r\f\v");
  size_t b = 0, e = s.size();
  if (left)
    while (b < e && set.find(s[b]) != std::string::npos) ++b;
  if (right)
    while (e > b && set.find(s[e - 1]) != std::string::npos) --e;
  return s.substr(b, e - b);
}

std::string title_case(const std::string& s) {
  std::string o = s;
  bool start = true;
  for (char& c : o) {
    if (std::isalpha(static_cast<unsigned char>(c))) {
      c = char(start ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
      start = false;
    } else {
      start = true;
    }
  }
  return o;
}

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
std::string upper(std::string s) {
  for (char& c : s) c = char(std::toupper(static_cast<unsigned char>(c)));
  return s;
}
std::string replace_all(std::string s, const std::string& from, const std::string& to, int64_t count = -1) {
  if (from.empty()) return s;
  size_t at = 0;
  while (count != 0 && (at = s.find(from, at)) != std::string::npos) {
    s.replace(at, from.size(), to);
    at += to.size();
    if (count > 0) --count;
  }
  return s;
}

class Renderer {
 public:
  explicit Renderer(const Value& vars) {
    globals_ = std::make_shared<Scope>();
    if (vars.kind == Value::Dict)
      for (const auto& [k, v] : *vars.o) globals_->vars[k] = v;
  }
  ScopeP globals_;

  Flow block(const Node& n, const ScopeP& sc, std::string& out) {
    for (const auto& s : n.c) {
      const Flow f = stmt(*s, sc, out);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Flow stmt(const Node& n, const ScopeP& sc, std::string& out) {
    switch (n.kind) {
      case Node::Text: out += n.s; return Flow::Normal;
      case Node::Output: out += to_string(eval(*n.c[0], sc)); return Flow::Normal;
      case Node::If: {
        size_t k = 0;
        for (; k + 1 < n.c.size(); k += 2)
          if (eval(*n.c[k], sc).truthy()) return block(*n.c[k + 1], sc, out);
        if (n.has_else) return block(*n.c.back(), sc, out);
        return Flow::Normal;
      }
      case Node::For: return for_loop(n, sc, out);
      case Node::Set: {
        Value v = eval(*n.c[0], sc);
        if (!n.s.empty()) {  // ns.attr = v
          Value* ns = sc->find(n.names[0]);
          if (!ns || ns->kind != Value::Dict) err(n.line, "'" + n.names[0] + "' is not a namespace");
          ns->set(n.s, std::move(v));
        } else if (n.names.size() == 1) {
          sc->vars[n.names[0]] = std::move(v);
        } else {
          if (v.kind != Value::List || v.a->size() != n.names.size())
            err(n.line, "cannot unpack into " + std::to_string(n.names.size()) + " names");
          for (size_t k = 0; k < n.names.size(); ++k) sc->vars[n.names[k]] = (*v.a)[k];
        }
        return Flow::Normal;
      }
      case Node::SetBlock: {
        std::string s;
        block(*n.c[0], sc, s);
        sc->vars[n.names[0]] = Value(s);
        return Flow::Normal;
      }
      case Node::Macro: {
        const Node* mn = &n;
        // The macro lives in the scope it reads: a weak reference, or the two would keep each other alive.
        std::weak_ptr<Scope> weak = sc;
        sc->vars[n.s] = Value::func([this, mn, weak](Args& a) {
          ScopeP def_scope = weak.lock();
          if (!def_scope) def_scope = globals_;
          auto s = std::make_shared<Scope>();
          s->parent = def_scope;
          for (size_t k = 0; k < mn->names.size(); ++k) {
            Value v = arg(a, k, mn->names[k].c_str());
            if (v.kind == Value::Undefined && mn->c[1 + k]) v = eval(*mn->c[1 + k], def_scope);
            s->vars[mn->names[k]] = v;
          }
          std::string o;
          block(*mn->c[0], s, o);
          return Value(o);
        });
        return Flow::Normal;
      }
      case Node::Break: return Flow::Break;
      case Node::Continue: return Flow::Continue;
      case Node::Block: return block(n, sc, out);
      default: err(n.line, "not a statement");
    }
  }

  Flow for_loop(const Node& n, const ScopeP& sc, std::string& out) {
    const Value it = eval(*n.c[0], sc);
    Array items;
    if (it.kind == Value::List) items = *it.a;
    else if (it.kind == Value::Dict) for (const auto& [k, v] : *it.o) items.push_back(Value(k));
    else if (it.kind == Value::String) for (char ch : it.s) items.push_back(Value(std::string(1, ch)));
    else err(n.line, "cannot iterate over " + std::string(it.kind == Value::Undefined ? "an undefined value" : to_json(it)));
    const auto bind = [&](const ScopeP& s, const Value& x) {
      if (n.names.size() == 1) {
        s->vars[n.names[0]] = x;
        return;
      }
      if (x.kind != Value::List || x.a->size() != n.names.size())
        err(n.line, "cannot unpack " + to_json(x) + " into " + std::to_string(n.names.size()) + " names");
      for (size_t k = 0; k < n.names.size(); ++k) s->vars[n.names[k]] = (*x.a)[k];
    };
    if (n.c[3]) {  // for x in xs if cond: the loop runs over the items that pass
      Array kept;
      for (const auto& x : items) {
        auto s = std::make_shared<Scope>();
        s->parent = sc;
        bind(s, x);
        if (eval(*n.c[3], s).truthy()) kept.push_back(x);
      }
      items.swap(kept);
    }
    if (items.empty()) {
      if (n.c[2]) return block(*n.c[2], sc, out);
      return Flow::Normal;
    }
    const int64_t len = int64_t(items.size());
    for (int64_t k = 0; k < len; ++k) {
      auto s = std::make_shared<Scope>();
      s->parent = sc;
      bind(s, items[size_t(k)]);
      s->vars["loop"] = Value::dict({{"index", Value(k + 1)}, {"index0", Value(k)}, {"revindex", Value(len - k)},
                                     {"revindex0", Value(len - k - 1)}, {"first", Value(k == 0)},
                                     {"last", Value(k == len - 1)}, {"length", Value(len)},
                                     {"previtem", k > 0 ? items[size_t(k - 1)] : Value()},
                                     {"nextitem", k + 1 < len ? items[size_t(k + 1)] : Value()}});
      if (block(*n.c[1], s, out) == Flow::Break) break;
    }
    return Flow::Normal;
  }

  Value lookup(const std::string& name, const ScopeP& sc, int line) {
    if (Value* v = sc->find(name)) return *v;
    if (name == "range")
      return Value::func([line](Args& a) {
        int64_t start = 0, stop = 0, step = 1;
        if (a.pos.size() == 1) stop = int64_t(as_num(a.pos[0]));
        else if (a.pos.size() >= 2) start = int64_t(as_num(a.pos[0])), stop = int64_t(as_num(a.pos[1]));
        if (a.pos.size() >= 3) step = int64_t(as_num(a.pos[2]));
        if (step == 0) err(line, "range() step must not be zero");
        Array r;
        for (int64_t x = start; step > 0 ? x < stop : x > stop; x += step) r.push_back(Value(x));
        return Value::list(std::move(r));
      });
    if (name == "namespace" || name == "dict")
      return Value::func([name](Args& a) {
        Value d = Value::dict();
        d.is_namespace = name == "namespace";
        if (!a.pos.empty() && a.pos[0].kind == Value::Dict) *d.o = *a.pos[0].o;
        for (auto& [k, v] : a.kw) d.set(k, v);
        return d;
      });
    if (name == "raise_exception")
      return Value::func([line](Args& a) -> Value {
        fail("chat template line ", line, ": the template raised an exception: ", a.pos.empty() ? "" : to_string(a.pos[0]));
      });
    if (name == "strftime_now")
      return Value::func([](Args& a) {
        const std::time_t t = std::time(nullptr);
        std::tm tm{};
        localtime_r(&t, &tm);
        char b[256];
        const std::string fmt = a.pos.empty() ? "" : to_string(a.pos[0]);
        const size_t n = std::strftime(b, sizeof b, fmt.c_str(), &tm);
        return Value(std::string(b, n));
      });
    return Value();
  }

  Value attr(const Value& o, const std::string& name, int line) {
    if (o.kind == Value::Dict) {
      for (const auto& [k, v] : *o.o)
        if (k == name) return v;
      if (o.is_namespace) return Value();
      if (name == "items")
        return Value::func([o](Args&) {
          Array r;
          for (const auto& [k, v] : *o.o) r.push_back(Value::list({Value(k), v}));
          return Value::list(std::move(r));
        });
      if (name == "keys" || name == "values")
        return Value::func([o, name](Args&) {
          Array r;
          for (const auto& [k, v] : *o.o) r.push_back(name == "keys" ? Value(k) : v);
          return Value::list(std::move(r));
        });
      if (name == "get")
        return Value::func([o](Args& a) {
          const Value v = o.get(to_string(arg(a, 0, "key")));
          return v.kind == Value::Undefined ? arg(a, 1, "default", Value::none()) : v;
        });
      return Value();
    }
    if (o.kind == Value::String) {
      const std::string s = o.s;
      if (name == "strip" || name == "lstrip" || name == "rstrip")
        return Value::func([s, name](Args& a) {
          return Value(strip_chars(s, arg(a, 0, "chars"), name != "rstrip", name != "lstrip"));
        });
      if (name == "upper") return Value::func([s](Args&) { return Value(upper(s)); });
      if (name == "lower") return Value::func([s](Args&) { return Value(lower(s)); });
      if (name == "title") return Value::func([s](Args&) { return Value(title_case(s)); });
      if (name == "capitalize")
        return Value::func([s](Args&) { return Value(s.empty() ? s : upper(s.substr(0, 1)) + lower(s.substr(1))); });
      if (name == "startswith" || name == "endswith")
        return Value::func([s, name](Args& a) {
          const Value p = arg(a, 0, "prefix");
          std::vector<std::string> ps;
          if (p.kind == Value::List) for (const auto& e : *p.a) ps.push_back(to_string(e));
          else ps.push_back(to_string(p));
          for (const auto& x : ps)
            if (x.size() <= s.size() && (name == "startswith" ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0))
              return Value(true);
          return Value(false);
        });
      if (name == "replace")
        return Value::func([s](Args& a) {
          const Value c = arg(a, 2, "count");
          return Value(replace_all(s, to_string(arg(a, 0, "old")), to_string(arg(a, 1, "new")), c.kind == Value::Int ? c.i : -1));
        });
      if (name == "split")
        return Value::func([s](Args& a) {
          const Value sep = arg(a, 0, "sep");
          const Value mx = arg(a, 1, "maxsplit");
          int64_t left = mx.kind == Value::Int ? mx.i : -1;
          Array r;
          if (sep.kind != Value::String) {  // runs of whitespace
            size_t k = 0;
            while (k < s.size()) {
              while (k < s.size() && std::isspace(static_cast<unsigned char>(s[k]))) ++k;
              if (k >= s.size()) break;
              size_t e = k;
              if (left == 0) e = s.size();
              else while (e < s.size() && !std::isspace(static_cast<unsigned char>(s[e]))) ++e;
              r.push_back(Value(s.substr(k, e - k)));
              if (left > 0) --left;
              k = e;
            }
          } else {
            size_t k = 0, at;
            while (left != 0 && (at = s.find(sep.s, k)) != std::string::npos && !sep.s.empty()) {
              r.push_back(Value(s.substr(k, at - k)));
              k = at + sep.s.size();
              if (left > 0) --left;
            }
            r.push_back(Value(s.substr(k)));
          }
          return Value::list(std::move(r));
        });
      return Value();
    }
    if (o.kind == Value::List) {
      if (name == "length") return Value(int64_t(o.a->size()));
      if (name == "append")
        return Value::func([o](Args& a) {
          o.a->push_back(a.pos.empty() ? Value() : a.pos[0]);
          return Value::none();
        });
      if (!name.empty() && std::isdigit(static_cast<unsigned char>(name[0]))) return item(o, Value(int64_t(std::stoll(name))), line);
      return Value();
    }
    return Value();
  }

  Value item(const Value& o, const Value& key, int line) {
    if (o.kind == Value::List || o.kind == Value::String) {
      if (key.kind != Value::Int) return Value();
      const int64_t n = o.kind == Value::List ? int64_t(o.a->size()) : int64_t(o.s.size());
      const int64_t k = key.i < 0 ? key.i + n : key.i;
      if (k < 0 || k >= n) return Value();
      return o.kind == Value::List ? (*o.a)[size_t(k)] : Value(std::string(1, o.s[size_t(k)]));
    }
    if (o.kind == Value::Dict) return key.kind == Value::String ? attr(o, key.s, line) : Value();
    return Value();
  }

  Value call(const Value& f, Args& a, int line) {
    if (f.kind != Value::Callable) err(line, "call of a value that is not callable");
    return (*f.fn)(a);
  }

  Args args_of(const Node& n, const ScopeP& sc) {
    Args a;
    for (size_t k = 1; k < n.c.size(); ++k) {
      Value v = eval(*n.c[k], sc);
      if (n.kw[k - 1].empty()) a.pos.push_back(std::move(v));
      else a.kw.emplace_back(n.kw[k - 1], std::move(v));
    }
    return a;
  }

  bool test(const std::string& t, const Value& v, Args& a, int line);
  Value filter(const std::string& f, const Value& v, Args& a, int line);

  Value eval(const Node& n, const ScopeP& sc) {
    switch (n.kind) {
      case Node::Literal: return n.v;
      case Node::Name: return lookup(n.s, sc, n.line);
      case Node::Attr: return attr(eval(*n.c[0], sc), n.s, n.line);
      case Node::Item: return item(eval(*n.c[0], sc), eval(*n.c[1], sc), n.line);
      case Node::Slice: {
        const Value o = eval(*n.c[0], sc);
        const Value b = n.c[1] ? eval(*n.c[1], sc) : Value(), e = n.c[2] ? eval(*n.c[2], sc) : Value(),
                    st = n.c[3] ? eval(*n.c[3], sc) : Value();
        const int64_t step = st.kind == Value::Int ? st.i : 1;
        if (step == 0) err(n.line, "slice step must not be zero");
        const int64_t len = o.kind == Value::List ? int64_t(o.a->size()) : o.kind == Value::String ? int64_t(o.s.size()) : -1;
        if (len < 0) return Value();
        int64_t start, stop;
        slice_bounds(len, b, e, step, start, stop);
        if (o.kind == Value::List) {
          Array r;
          for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) r.push_back((*o.a)[size_t(k)]);
          return Value::list(std::move(r));
        }
        std::string r;
        for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) r += o.s[size_t(k)];
        return Value(r);
      }
      case Node::Call: {
        const Value f = eval(*n.c[0], sc);
        Args a = args_of(n, sc);
        return call(f, a, n.line);
      }
      case Node::Filter: {
        const Value v = eval(*n.c[0], sc);
        Args a = args_of(n, sc);
        return filter(n.s, v, a, n.line);
      }
      case Node::Test: {
        const Value v = eval(*n.c[0], sc);
        Args a = args_of(n, sc);
        return Value(test(n.s, v, a, n.line) != n.neg);
      }
      case Node::Unary: {
        const Value v = eval(*n.c[0], sc);
        if (n.s == "not") return Value(!v.truthy());
        if (v.kind == Value::Int) return Value(n.s == "-" ? -v.i : v.i);
        if (v.kind == Value::Float) return Value(n.s == "-" ? -v.f : v.f);
        err(n.line, "unary " + n.s + " on a value that is not a number");
      }
      case Node::Binary: return binary(n, sc);
      case Node::Cond:
        if (eval(*n.c[1], sc).truthy()) return eval(*n.c[0], sc);
        return n.c[2] ? eval(*n.c[2], sc) : Value();
      case Node::ListLit: {
        Array r;
        for (const auto& e : n.c) r.push_back(eval(*e, sc));
        return Value::list(std::move(r));
      }
      case Node::DictLit: {
        Value d = Value::dict();
        for (size_t k = 0; k + 1 < n.c.size(); k += 2) d.set(to_string(eval(*n.c[k], sc)), eval(*n.c[k + 1], sc));
        return d;
      }
      default: err(n.line, "not an expression");
    }
  }

  Value binary(const Node& n, const ScopeP& sc) {
    const std::string& op = n.s;
    const Value a = eval(*n.c[0], sc);
    if (op == "and") return a.truthy() ? eval(*n.c[1], sc) : a;
    if (op == "or") return a.truthy() ? a : eval(*n.c[1], sc);
    const Value b = eval(*n.c[1], sc);
    if (op == "==") return Value(equal(a, b));
    if (op == "!=") return Value(!equal(a, b));
    if (op == "~") return Value(to_string(a) + to_string(b));
    if (op == "in" || op == "not in") {
      bool found = false;
      if (b.kind == Value::String) found = b.s.find(to_string(a)) != std::string::npos;
      else if (b.kind == Value::List) found = std::any_of(b.a->begin(), b.a->end(), [&](const Value& x) { return equal(a, x); });
      else if (b.kind == Value::Dict) found = b.get(to_string(a)).kind != Value::Undefined;
      else if (b.kind != Value::Undefined && b.kind != Value::None) err(n.line, "'in' needs a string, list or dict on its right");
      return Value(found != (op == "not in"));
    }
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      int c;
      if (is_num(a) && is_num(b)) c = as_num(a) < as_num(b) ? -1 : as_num(a) > as_num(b) ? 1 : 0;
      else if (a.kind == Value::String && b.kind == Value::String) c = a.s.compare(b.s);
      else err(n.line, "cannot compare " + to_json(a) + " and " + to_json(b));
      return Value(op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0);
    }
    if (op == "+" && a.kind == Value::String && b.kind == Value::String) return Value(a.s + b.s);
    if (op == "+" && a.kind == Value::List && b.kind == Value::List) {
      Array r = *a.a;
      r.insert(r.end(), b.a->begin(), b.a->end());
      return Value::list(std::move(r));
    }
    if (op == "*" && a.kind == Value::String && b.kind == Value::Int) {
      std::string r;
      for (int64_t k = 0; k < b.i; ++k) r += a.s;
      return Value(r);
    }
    if (!is_num(a) || !is_num(b)) err(n.line, "operator " + op + " on " + to_json(a) + " and " + to_json(b));
    if (a.kind == Value::Int && b.kind == Value::Int && op != "/" && op != "**") {
      if ((op == "//" || op == "%") && b.i == 0) err(n.line, "division by zero");
      if (op == "+") return Value(a.i + b.i);
      if (op == "-") return Value(a.i - b.i);
      if (op == "*") return Value(a.i * b.i);
      const int64_t q = a.i / b.i - ((a.i % b.i != 0) && ((a.i < 0) != (b.i < 0)) ? 1 : 0);
      if (op == "//") return Value(q);
      return Value(a.i - q * b.i);
    }
    const double x = as_num(a), y = as_num(b);
    if (op == "+") return Value(x + y);
    if (op == "-") return Value(x - y);
    if (op == "*") return Value(x * y);
    if (op == "**") return a.kind == Value::Int && b.kind == Value::Int && b.i >= 0 ? Value(int64_t(std::llround(std::pow(x, y)))) : Value(std::pow(x, y));
    if (y == 0) err(n.line, "division by zero");
    if (op == "/") return Value(x / y);
    if (op == "//") return Value(std::floor(x / y));
    return Value(x - std::floor(x / y) * y);
  }
};

bool Renderer::test(const std::string& t, const Value& v, Args& a, int line) {
  const Value x = a.pos.empty() ? Value() : a.pos[0];
  if (t == "defined") return v.kind != Value::Undefined;
  if (t == "undefined") return v.kind == Value::Undefined;
  if (t == "none") return v.kind == Value::None;
  if (t == "string") return v.kind == Value::String;
  if (t == "mapping") return v.kind == Value::Dict;
  if (t == "iterable") return v.kind == Value::List || v.kind == Value::Dict || v.kind == Value::String;
  if (t == "sequence") return v.kind == Value::List || v.kind == Value::String;
  if (t == "number") return is_num(v);
  if (t == "integer") return v.kind == Value::Int;
  if (t == "float") return v.kind == Value::Float;
  if (t == "boolean") return v.kind == Value::Bool;
  if (t == "true") return v.kind == Value::Bool && v.b;
  if (t == "false") return v.kind == Value::Bool && !v.b;
  if (t == "callable") return v.kind == Value::Callable;
  if (t == "odd" || t == "even") return v.kind == Value::Int && ((v.i % 2 != 0) == (t == "odd"));
  if (t == "divisibleby") return v.kind == Value::Int && x.kind == Value::Int && x.i != 0 && v.i % x.i == 0;
  if (t == "eq" || t == "equalto" || t == "==") return equal(v, x);
  if (t == "ne" || t == "!=") return !equal(v, x);
  if (t == "lower") return v.kind == Value::String && lower(v.s) == v.s;
  if (t == "upper") return v.kind == Value::String && upper(v.s) == v.s;
  if (t == "in") {
    if (x.kind == Value::List) return std::any_of(x.a->begin(), x.a->end(), [&](const Value& e) { return equal(v, e); });
    if (x.kind == Value::String) return x.s.find(to_string(v)) != std::string::npos;
    if (x.kind == Value::Dict) return x.get(to_string(v)).kind != Value::Undefined;
    return false;
  }
  err(line, "unknown test '" + t + "'");
}

Value Renderer::filter(const std::string& f, const Value& v, Args& a, int line) {
  const auto items_of = [&](const Value& x) -> Array {
    if (x.kind == Value::List) return *x.a;
    if (x.kind == Value::Dict) {
      Array r;
      for (const auto& [k, e] : *x.o) r.push_back(Value(k));
      return r;
    }
    if (x.kind == Value::String) {
      Array r;
      for (char c : x.s) r.push_back(Value(std::string(1, c)));
      return r;
    }
    err(line, "filter '" + f + "' needs a list, got " + (x.kind == Value::Undefined ? std::string("an undefined value") : to_json(x)));
  };
  if (f == "trim") return Value(strip_chars(to_string(v), arg(a, 0, "chars"), true, true));
  if (f == "length" || f == "count") {
    if (v.kind == Value::String) return Value(int64_t(v.s.size()));
    return Value(int64_t(items_of(v).size()));
  }
  if (f == "tojson") {
    const Value ind = arg(a, 0, "indent");
    return Value(to_json(v, ind.kind == Value::Int ? int(ind.i) : -1, 0));
  }
  if (f == "string") return Value(to_string(v));
  if (f == "lower") return Value(lower(to_string(v)));
  if (f == "upper") return Value(upper(to_string(v)));
  if (f == "title") return Value(title_case(to_string(v)));
  if (f == "capitalize") {
    const std::string s = to_string(v);
    return Value(s.empty() ? s : upper(s.substr(0, 1)) + lower(s.substr(1)));
  }
  if (f == "safe" || f == "e" || f == "escape") return f == "safe" ? v : Value(to_string(v));
  if (f == "replace") {
    const Value c = arg(a, 2, "count");
    return Value(replace_all(to_string(v), to_string(arg(a, 0, "old")), to_string(arg(a, 1, "new")), c.kind == Value::Int ? c.i : -1));
  }
  if (f == "default" || f == "d") {
    const bool boolean = arg(a, 1, "boolean").truthy();
    if (v.kind == Value::Undefined || (boolean && !v.truthy())) return arg(a, 0, "default_value", Value(""));
    return v;
  }
  if (f == "first" || f == "last") {
    if (v.kind == Value::String) return v.s.empty() ? Value() : Value(std::string(1, f == "first" ? v.s.front() : v.s.back()));
    const Array xs = items_of(v);
    return xs.empty() ? Value() : f == "first" ? xs.front() : xs.back();
  }
  if (f == "list") return Value::list(items_of(v));
  if (f == "reverse") {
    if (v.kind == Value::String) return Value(std::string(v.s.rbegin(), v.s.rend()));
    Array xs = items_of(v);
    std::reverse(xs.begin(), xs.end());
    return Value::list(std::move(xs));
  }
  if (f == "join") {
    const std::string sep = to_string(arg(a, 0, "d", Value("")));
    const Value at = arg(a, 1, "attribute");
    std::string o;
    bool first = true;
    for (const auto& x : items_of(v)) {
      o += (first ? "" : sep) + to_string(at.kind == Value::Undefined ? x : attr(x, to_string(at), line));
      first = false;
    }
    return Value(o);
  }
  if (f == "int") {
    if (v.kind == Value::Int) return v;
    if (v.kind == Value::Float) return Value(int64_t(v.f));
    if (v.kind == Value::String) {
      try { return Value(int64_t(std::stoll(v.s))); } catch (...) { return arg(a, 0, "default", Value(0)); }
    }
    return Value(int64_t(v.truthy()));
  }
  if (f == "float") {
    if (is_num(v)) return Value(as_num(v));
    if (v.kind == Value::String) {
      try { return Value(std::stod(v.s)); } catch (...) { return Value(0.0); }
    }
    return Value(0.0);
  }
  if (f == "abs") {
    if (v.kind == Value::Int) return Value(v.i < 0 ? -v.i : v.i);
    return Value(std::fabs(as_num(v)));
  }
  if (f == "round") {
    const Value p = arg(a, 0, "precision", Value(0));
    const double m = std::pow(10.0, double(p.kind == Value::Int ? p.i : 0));
    return Value(std::round(as_num(v) * m) / m);
  }
  if (f == "items") {
    if (v.kind != Value::Dict) err(line, "filter 'items' needs a dict");
    Array r;
    for (const auto& [k, e] : *v.o) r.push_back(Value::list({Value(k), e}));
    return Value::list(std::move(r));
  }
  if (f == "unique") {
    Array r;
    for (const auto& x : items_of(v))
      if (std::none_of(r.begin(), r.end(), [&](const Value& y) { return equal(x, y); })) r.push_back(x);
    return Value::list(std::move(r));
  }
  if (f == "sort") {
    Array xs = items_of(v);
    const Value at = arg(a, 2, "attribute");
    const bool rev = arg(a, 0, "reverse").truthy();
    const auto key = [&](const Value& x) { return at.kind == Value::Undefined ? x : attr(x, to_string(at), line); };
    std::stable_sort(xs.begin(), xs.end(), [&](const Value& x, const Value& y) {
      const Value p = key(x), q = key(y);
      const bool lt = is_num(p) && is_num(q) ? as_num(p) < as_num(q) : to_string(p) < to_string(q);
      const bool gt = is_num(p) && is_num(q) ? as_num(p) > as_num(q) : to_string(p) > to_string(q);
      return rev ? gt : lt;
    });
    return Value::list(std::move(xs));
  }
  if (f == "indent") {
    const Value w = arg(a, 0, "width", Value(4));
    const std::string pad = w.kind == Value::String ? w.s : std::string(size_t(w.kind == Value::Int ? w.i : 4), ' ');
    const bool first = arg(a, 1, "first").truthy(), blank = arg(a, 2, "blank").truthy();
    const std::string s = to_string(v);
    std::string o;
    size_t k = 0;
    bool is_first = true;
    while (k <= s.size()) {
      const size_t e = std::min(s.find('\n', k), s.size());
      const std::string ln = s.substr(k, e - k);
      if ((!is_first || first) && (blank || !ln.empty())) o += pad;
      o += ln;
      if (e < s.size()) o += '\n';
      is_first = false;
      k = e + 1;
    }
    return Value(o);
  }
  if (f == "selectattr" || f == "rejectattr" || f == "select" || f == "reject") {
    const bool by_attr = f == "selectattr" || f == "rejectattr";
    const bool keep_true = f == "selectattr" || f == "select";
    const size_t t0 = by_attr ? 1 : 0;
    Array r;
    for (const auto& x : items_of(v)) {
      const Value subject = by_attr ? attr(x, to_string(a.pos.empty() ? Value() : a.pos[0]), line) : x;
      bool ok;
      if (a.pos.size() > t0) {
        Args ta;
        ta.pos.assign(a.pos.begin() + std::ptrdiff_t(t0) + 1, a.pos.end());
        ok = test(to_string(a.pos[t0]), subject, ta, line);
      } else {
        ok = subject.truthy();
      }
      if (ok == keep_true) r.push_back(x);
    }
    return Value::list(std::move(r));
  }
  if (f == "map") {
    const Value at = arg(a, 99, "attribute");
    Array r;
    for (const auto& x : items_of(v)) {
      if (at.kind != Value::Undefined) {
        Value y = attr(x, to_string(at), line);
        if (y.kind == Value::Undefined) y = arg(a, 99, "default");
        r.push_back(y);
      } else if (!a.pos.empty()) {
        Args fa;
        fa.pos.assign(a.pos.begin() + 1, a.pos.end());
        r.push_back(filter(to_string(a.pos[0]), x, fa, line));
      } else {
        err(line, "map needs a filter name or attribute=");
      }
    }
    return Value::list(std::move(r));
  }
  err(line, "unknown filter '" + f + "'");
}

}  // namespace

Template::Template(const std::string& source) : root_(parse_template(source)) {}

std::string Template::render(const Value& vars) const {
  Renderer r(vars);
  std::string out;
  r.block(*root_, r.globals_, out);
  return out;
}

}  // namespace tessera::jinja
