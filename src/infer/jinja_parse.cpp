// Jinja templates: preprocessing (as @huggingface/jinja: trim_blocks,
// lstrip_blocks, the final newline, {% generation %} tags), the lexer and a
// recursive-descent parser with Jinja2's operator precedence.
#include <algorithm>
#include <cctype>

#include "core/error.h"
#include "infer/jinja_ast.h"

namespace tessera::jinja {

namespace {

// trim_blocks drops newlines; they are kept as this marker until the lexer
// (which counts it as a line, for error messages, and emits nothing for it).
constexpr char kDropped = '\x01';

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v' || c == kDropped; }
bool is_nl(char c) { return c == '\n' || c == kDropped; }

std::string preprocess(std::string t) {
  if (!t.empty() && t.back() == '\n') t.pop_back();
  // lstrip_blocks: spaces and tabs from a line's start up to "{%", "{#" or "{-".
  std::string a;
  a.reserve(t.size());
  for (size_t i = 0; i < t.size();) {
    if (i == 0 || t[i - 1] == '\n') {
      size_t j = i;
      while (j < t.size() && (t[j] == ' ' || t[j] == '\t')) ++j;
      if (j + 1 < t.size() && t[j] == '{' && (t[j + 1] == '#' || t[j + 1] == '%' || t[j + 1] == '-')) i = j;
    }
    a += t[i++];
  }
  // trim_blocks: the newline right after "%}", "#}" or "-}".
  std::string b;
  b.reserve(a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    b += a[i];
    if (a[i] == '}' && i > 0 && (a[i - 1] == '%' || a[i - 1] == '#' || a[i - 1] == '-') && i + 1 < a.size() && a[i + 1] == '\n')
      b += kDropped, ++i;
  }
  // {% generation %} / {% endgeneration %} markers are dropped.
  std::string out;
  size_t last = 0, at = 0;
  while ((at = b.find("{%", at)) != std::string::npos) {
    size_t p = at + 2;
    const bool lstrip = p < b.size() && b[p] == '-';
    if (lstrip) ++p;
    while (p < b.size() && is_ws(b[p])) ++p;
    if (b.compare(p, 3, "end") == 0) p += 3;
    if (b.compare(p, 10, "generation") != 0) {
      at += 2;
      continue;
    }
    p += 10;
    while (p < b.size() && is_ws(b[p])) ++p;
    const bool rstrip = p < b.size() && b[p] == '-';
    if (rstrip) ++p;
    if (b.compare(p, 2, "%}") != 0) {
      at += 2;
      continue;
    }
    p += 2;
    size_t end = at;
    while (lstrip && end > last && is_ws(b[end - 1])) --end;
    out.append(b, last, end - last);
    size_t after = p;
    while (after < b.size() && is_ws(b[after])) ++after;
    if (!rstrip) out.append(b, p, after - p);
    last = at = after;
  }
  return out + b.substr(last);
}

struct Tok {
  enum Kind { Text, VarStart, VarEnd, BlockStart, BlockEnd, Name, Str, Int, Float, Op, End } kind;
  std::string s;
  int line;
};

[[noreturn]] void syntax(int line, const std::string& msg) { fail("chat template line ", line, ": ", msg); }

std::vector<Tok> lex(const std::string& src) {
  std::vector<Tok> out;
  int line = 1;
  size_t i = 0;
  const auto count_lines = [&](size_t from, size_t to) {
    for (size_t k = from; k < to && k < src.size(); ++k) line += is_nl(src[k]);
  };
  bool strip_next = false;  // the previous tag ended with '-'
  while (i < src.size()) {
    size_t open = i;
    while ((open = src.find('{', open)) != std::string::npos) {
      if (open + 1 < src.size() && (src[open + 1] == '{' || src[open + 1] == '%' || src[open + 1] == '#')) break;
      ++open;
    }
    if (open == std::string::npos) open = src.size();
    std::string text = src.substr(i, open - i);
    if (strip_next) {
      size_t k = 0;
      while (k < text.size() && is_ws(text[k])) ++k;
      text.erase(0, k);
    }
    const bool lstrip = open + 2 < src.size() && src[open + 2] == '-';
    if (lstrip)
      while (!text.empty() && is_ws(text.back())) text.pop_back();
    text.erase(std::remove(text.begin(), text.end(), kDropped), text.end());
    if (!text.empty()) out.push_back({Tok::Text, text, line});
    count_lines(i, open);
    if (open >= src.size()) break;
    const char kind = src[open + 1];
    size_t p = open + 2 + (lstrip || (open + 2 < src.size() && src[open + 2] == '+') ? 1 : 0);
    if (kind == '#') {
      const size_t close = src.find("#}", p);
      if (close == std::string::npos) syntax(line, "unclosed comment");
      strip_next = close > 0 && src[close - 1] == '-';
      count_lines(open, close + 2);
      i = close + 2;
      continue;
    }
    const char closer = kind == '{' ? '}' : '%';
    out.push_back({kind == '{' ? Tok::VarStart : Tok::BlockStart, "", line});
    for (;;) {
      while (p < src.size() && is_ws(src[p])) line += is_nl(src[p++]);
      if (p >= src.size()) syntax(line, kind == '{' ? "unclosed '{{'" : "unclosed '{%'");
      const char c = src[p];
      if (c == '-' && p + 2 < src.size() && src[p + 1] == closer && src[p + 2] == '}') {
        strip_next = true;
        p += 3;
        break;
      }
      if (c == closer && p + 1 < src.size() && src[p + 1] == '}') {
        strip_next = false;
        p += 2;
        break;
      }
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t q = p;
        while (q < src.size() && (std::isalnum(static_cast<unsigned char>(src[q])) || src[q] == '_')) ++q;
        out.push_back({Tok::Name, src.substr(p, q - p), line});
        p = q;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        size_t q = p;
        while (q < src.size() && std::isdigit(static_cast<unsigned char>(src[q]))) ++q;
        bool flt = false;
        if (q + 1 < src.size() && src[q] == '.' && std::isdigit(static_cast<unsigned char>(src[q + 1]))) {
          flt = true;
          ++q;
          while (q < src.size() && std::isdigit(static_cast<unsigned char>(src[q]))) ++q;
        }
        out.push_back({flt ? Tok::Float : Tok::Int, src.substr(p, q - p), line});
        p = q;
      } else if (c == '\'' || c == '"') {
        std::string s;
        size_t q = p + 1;
        for (; q < src.size() && src[q] != c; ++q) {
          if (src[q] == '\\' && q + 1 < src.size()) {
            const char e = src[++q];
            switch (e) {
              case 'n': s += '\n'; break;
              case 't': s += '\t'; break;
              case 'r': s += '\r'; break;
              case 'b': s += '\b'; break;
              case 'f': s += '\f'; break;
              case 'v': s += '\v'; break;
              default: s += e;
            }
          } else {
            line += src[q] == '\n';
            s += src[q];
          }
        }
        if (q >= src.size()) syntax(line, "unterminated string");
        out.push_back({Tok::Str, s, line});
        p = q + 1;
      } else {
        static const char* two[] = {"==", "!=", "<=", ">=", "//", "**"};
        std::string op(1, c);
        for (const char* t : two)
          if (src.compare(p, 2, t) == 0) op = t;
        if (std::string("+-*/%~|.,:()[]{}=<>!").find(c) == std::string::npos) syntax(line, std::string("unexpected character '") + c + "'");
        out.push_back({Tok::Op, op, line});
        p += op.size();
      }
    }
    out.push_back({kind == '{' ? Tok::VarEnd : Tok::BlockEnd, "", line});
    i = p;
  }
  out.push_back({Tok::End, "", line});
  return out;
}

class Parser {
 public:
  explicit Parser(std::vector<Tok> t) : t_(std::move(t)) {}

  NodeP parse() {
    std::string end;
    NodeP b = body({}, end);
    return b;
  }

 private:
  std::vector<Tok> t_;
  size_t p_ = 0;

  const Tok& peek(size_t k = 0) const { return t_[std::min(p_ + k, t_.size() - 1)]; }
  const Tok& next() { return t_[std::min(p_++, t_.size() - 1)]; }
  bool is_op(const char* s, size_t k = 0) const { return peek(k).kind == Tok::Op && peek(k).s == s; }
  bool is_name(const char* s, size_t k = 0) const { return peek(k).kind == Tok::Name && peek(k).s == s; }
  void expect_op(const char* s) {
    if (!is_op(s)) syntax(peek().line, std::string("expected '") + s + "', found '" + describe(peek()) + "'");
    ++p_;
  }
  std::string expect_name() {
    if (peek().kind != Tok::Name) syntax(peek().line, "expected a name, found '" + describe(peek()) + "'");
    return next().s;
  }
  void expect(Tok::Kind k, const char* what) {
    if (peek().kind != k) syntax(peek().line, std::string("expected ") + what + ", found '" + describe(peek()) + "'");
    ++p_;
  }
  static std::string describe(const Tok& t) {
    switch (t.kind) {
      case Tok::VarEnd: return "}}";
      case Tok::BlockEnd: return "%}";
      case Tok::End: return "end of template";
      case Tok::Text: return "text";
      default: return t.s;
    }
  }
  static NodeP make(Node::Kind k, int line) {
    auto n = std::make_shared<Node>();
    n->kind = k, n->line = line;
    return n;
  }

  // Statements until a {% NAME %} with NAME in stops (consumed up to the name; returned in end).
  NodeP body(const std::vector<std::string>& stops, std::string& end) {
    NodeP b = make(Node::Block, peek().line);
    for (;;) {
      const Tok& t = peek();
      if (t.kind == Tok::End) {
        if (!stops.empty()) syntax(t.line, "missing {% " + stops.back() + " %}");
        return b;
      }
      if (t.kind == Tok::Text) {
        NodeP n = make(Node::Text, t.line);
        n->s = next().s;
        b->c.push_back(n);
      } else if (t.kind == Tok::VarStart) {
        ++p_;
        NodeP n = make(Node::Output, t.line);
        n->c.push_back(expr());
        expect(Tok::VarEnd, "'}}'");
        b->c.push_back(n);
      } else {
        ++p_;
        const std::string name = peek().kind == Tok::Name ? peek().s : "";
        for (const auto& s : stops)
          if (name == s) {
            ++p_;
            end = name;
            return b;
          }
        b->c.push_back(statement());
      }
    }
  }

  NodeP statement() {
    const int line = peek().line;
    const std::string kw = expect_name();
    std::string end;
    if (kw == "if") {
      NodeP n = make(Node::If, line);
      n->c.push_back(expr());
      expect(Tok::BlockEnd, "'%}'");
      for (;;) {
        n->c.push_back(body({"elif", "else", "endif"}, end));
        if (end == "elif") {
          n->c.push_back(expr());
          expect(Tok::BlockEnd, "'%}'");
        } else if (end == "else") {
          expect(Tok::BlockEnd, "'%}'");
          n->c.push_back(body({"endif"}, end));
          n->has_else = true;
          expect(Tok::BlockEnd, "'%}'");
          return n;
        } else {
          expect(Tok::BlockEnd, "'%}'");
          return n;
        }
      }
    }
    if (kw == "for") {
      NodeP n = make(Node::For, line);
      n->names.push_back(expect_name());
      while (is_op(",")) ++p_, n->names.push_back(expect_name());
      if (!is_name("in")) syntax(peek().line, "expected 'in' in the for statement");
      ++p_;
      n->c.push_back(or_expr());
      NodeP cond;
      if (is_name("if")) ++p_, cond = expr();
      if (is_name("recursive")) syntax(line, "recursive for loops are not supported");
      expect(Tok::BlockEnd, "'%}'");
      n->c.push_back(body({"else", "endfor"}, end));
      NodeP els;
      if (end == "else") {
        expect(Tok::BlockEnd, "'%}'");
        els = body({"endfor"}, end);
      }
      expect(Tok::BlockEnd, "'%}'");
      n->c.push_back(els);
      n->c.push_back(cond);
      return n;
    }
    if (kw == "set") {
      const std::string first = expect_name();
      if (is_op(".")) {
        ++p_;
        NodeP n = make(Node::Set, line);
        n->names.push_back(first);
        n->s = expect_name();
        expect_op("=");
        n->c.push_back(expr());
        expect(Tok::BlockEnd, "'%}'");
        return n;
      }
      std::vector<std::string> names{first};
      while (is_op(",")) ++p_, names.push_back(expect_name());
      if (peek().kind == Tok::BlockEnd && names.size() == 1) {
        ++p_;
        NodeP n = make(Node::SetBlock, line);
        n->names = names;
        n->c.push_back(body({"endset"}, end));
        expect(Tok::BlockEnd, "'%}'");
        return n;
      }
      expect_op("=");
      NodeP n = make(Node::Set, line);
      n->names = names;
      NodeP v = expr();
      if (is_op(",")) {  // set a, b = x, y
        NodeP tup = make(Node::ListLit, line);
        tup->c.push_back(v);
        while (is_op(",")) ++p_, tup->c.push_back(expr());
        v = tup;
      }
      n->c.push_back(v);
      expect(Tok::BlockEnd, "'%}'");
      return n;
    }
    if (kw == "macro") {
      NodeP n = make(Node::Macro, line);
      n->s = expect_name();
      expect_op("(");
      std::vector<NodeP> defs;
      while (!is_op(")")) {
        n->names.push_back(expect_name());
        NodeP d;
        if (is_op("=")) ++p_, d = expr();
        defs.push_back(d);
        if (!is_op(")")) expect_op(",");
      }
      ++p_;
      expect(Tok::BlockEnd, "'%}'");
      n->c.push_back(body({"endmacro"}, end));
      expect(Tok::BlockEnd, "'%}'");
      n->c.insert(n->c.end(), defs.begin(), defs.end());
      return n;
    }
    if (kw == "break" || kw == "continue") {
      expect(Tok::BlockEnd, "'%}'");
      return make(kw == "break" ? Node::Break : Node::Continue, line);
    }
    syntax(line, "unsupported statement '{% " + kw + " %}'");
  }

  // Expressions, lowest precedence first.
  NodeP expr() {
    NodeP a = or_expr();
    if (is_name("if")) {
      const int line = peek().line;
      ++p_;
      NodeP n = make(Node::Cond, line);
      n->c.push_back(a);
      n->c.push_back(or_expr());
      NodeP b;
      if (is_name("else")) ++p_, b = expr();
      n->c.push_back(b);
      return n;
    }
    return a;
  }
  NodeP binary(const std::string& op, NodeP a, NodeP b, int line) {
    NodeP n = make(Node::Binary, line);
    n->s = op;
    n->c = {std::move(a), std::move(b)};
    return n;
  }
  NodeP or_expr() {
    NodeP a = and_expr();
    while (is_name("or")) {
      const int line = next().line;
      a = binary("or", a, and_expr(), line);
    }
    return a;
  }
  NodeP and_expr() {
    NodeP a = not_expr();
    while (is_name("and")) {
      const int line = next().line;
      a = binary("and", a, not_expr(), line);
    }
    return a;
  }
  NodeP not_expr() {
    if (is_name("not")) {
      NodeP n = make(Node::Unary, next().line);
      n->s = "not";
      n->c.push_back(not_expr());
      return n;
    }
    return compare();
  }
  NodeP compare() {
    NodeP a = math1();
    for (;;) {
      const int line = peek().line;
      if (peek().kind == Tok::Op && (peek().s == "==" || peek().s == "!=" || peek().s == "<" || peek().s == ">" ||
                                     peek().s == "<=" || peek().s == ">=")) {
        const std::string op = next().s;
        a = binary(op, a, math1(), line);
      } else if (is_name("in")) {
        ++p_;
        a = binary("in", a, math1(), line);
      } else if (is_name("not") && is_name("in", 1)) {
        p_ += 2;
        a = binary("not in", a, math1(), line);
      } else {
        return a;
      }
    }
  }
  NodeP math1() {
    NodeP a = concat();
    while (is_op("+") || is_op("-")) {
      const Tok& t = next();
      a = binary(t.s, a, concat(), t.line);
    }
    return a;
  }
  NodeP concat() {
    NodeP a = math2();
    while (is_op("~")) {
      const int line = next().line;
      a = binary("~", a, math2(), line);
    }
    return a;
  }
  NodeP math2() {
    NodeP a = pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Tok& t = next();
      a = binary(t.s, a, pow(), t.line);
    }
    return a;
  }
  NodeP pow() {
    NodeP a = unary(true);
    while (is_op("**")) {
      const int line = next().line;
      a = binary("**", a, unary(true), line);
    }
    return a;
  }
  NodeP unary(bool with_filter) {
    NodeP a;
    if (is_op("-") || is_op("+")) {
      a = make(Node::Unary, peek().line);
      a->s = next().s;
      a->c.push_back(unary(false));
    } else {
      a = postfix(primary());
    }
    return with_filter ? filters(a) : a;
  }
  void call_args(NodeP& n) {  // after '('
    while (!is_op(")")) {
      if (peek().kind == Tok::Name && is_op("=", 1)) {
        n->kw.push_back(next().s);
        ++p_;
      } else {
        n->kw.emplace_back();
      }
      n->c.push_back(expr());
      if (!is_op(")")) expect_op(",");
    }
    ++p_;
  }
  NodeP postfix(NodeP a) {
    for (;;) {
      const int line = peek().line;
      if (is_op(".")) {
        ++p_;
        NodeP n = make(Node::Attr, line);
        n->s = peek().kind == Tok::Int ? next().s : expect_name();
        n->c.push_back(a);
        a = n;
      } else if (is_op("[")) {
        ++p_;
        NodeP parts[3];
        int k = 0;
        bool slice = false;
        for (;;) {
          if (is_op("]")) break;
          if (is_op(":")) {
            slice = true;
            ++p_;
            if (++k > 2) syntax(line, "a slice has at most three parts");
            continue;
          }
          parts[k] = expr();
        }
        ++p_;
        NodeP n = make(slice ? Node::Slice : Node::Item, line);
        n->c.push_back(a);
        if (slice)
          n->c.insert(n->c.end(), {parts[0], parts[1], parts[2]});
        else if (!parts[0])
          syntax(line, "empty subscript");
        else
          n->c.push_back(parts[0]);
        a = n;
      } else if (is_op("(")) {
        ++p_;
        NodeP n = make(Node::Call, line);
        n->c.push_back(a);
        call_args(n);
        a = n;
      } else {
        return a;
      }
    }
  }
  NodeP filters(NodeP a) {
    for (;;) {
      const int line = peek().line;
      if (is_op("|")) {
        ++p_;
        NodeP n = make(Node::Filter, line);
        n->s = expect_name();
        n->c.push_back(a);
        if (is_op("(")) ++p_, call_args(n);
        a = n;
      } else if (is_name("is")) {
        ++p_;
        NodeP n = make(Node::Test, line);
        if (is_name("not")) ++p_, n->neg = true;
        n->s = expect_name();
        n->c.push_back(a);
        if (is_op("(")) {
          ++p_;
          call_args(n);
        } else if (peek().kind == Tok::Int || peek().kind == Tok::Str || peek().kind == Tok::Float ||
                   (peek().kind == Tok::Name && !is_name("and") && !is_name("or") && !is_name("else") &&
                    !is_name("if") && !is_name("in") && !is_name("not") && !is_name("is"))) {
          n->kw.emplace_back();
          n->c.push_back(postfix(primary()));
        }
        a = n;
      } else {
        return a;
      }
    }
  }
  NodeP primary() {
    const Tok& t = next();
    NodeP n = make(Node::Literal, t.line);
    switch (t.kind) {
      case Tok::Str: {
        std::string s = t.s;
        while (peek().kind == Tok::Str) s += next().s;  // adjacent literals concatenate
        n->v = Value(s);
        return n;
      }
      case Tok::Int: n->v = Value(int64_t(std::stoll(t.s))); return n;
      case Tok::Float: n->v = Value(std::stod(t.s)); return n;
      case Tok::Name:
        if (t.s == "true" || t.s == "True") return n->v = Value(true), n;
        if (t.s == "false" || t.s == "False") return n->v = Value(false), n;
        if (t.s == "none" || t.s == "None") return n->v = Value::none(), n;
        n->kind = Node::Name;
        n->s = t.s;
        return n;
      case Tok::Op:
        if (t.s == "(") {
          NodeP e = expr();
          if (is_op(",")) {
            NodeP tup = make(Node::ListLit, t.line);
            tup->c.push_back(e);
            while (is_op(",")) {
              ++p_;
              if (is_op(")")) break;
              tup->c.push_back(expr());
            }
            e = tup;
          }
          expect_op(")");
          return e;
        }
        if (t.s == "[") {
          n->kind = Node::ListLit;
          while (!is_op("]")) {
            n->c.push_back(expr());
            if (!is_op("]")) expect_op(",");
          }
          ++p_;
          return n;
        }
        if (t.s == "{") {
          n->kind = Node::DictLit;
          while (!is_op("}")) {
            n->c.push_back(expr());
            expect_op(":");
            n->c.push_back(expr());
            if (!is_op("}")) expect_op(",");
          }
          ++p_;
          return n;
        }
        break;
      default:
        break;
    }
    syntax(t.line, "unexpected '" + describe(t) + "' in an expression");
  }
};

}  // namespace

NodeP parse_template(const std::string& source) { return Parser(lex(preprocess(source))).parse(); }

}  // namespace tessera::jinja
