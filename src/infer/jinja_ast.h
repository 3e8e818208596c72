// The parsed form of a Jinja template (infer/jinja.h): statements and
// expressions as one node type. Internal to jinja_parse.cpp / jinja_eval.cpp.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "infer/jinja.h"

namespace tessera::jinja {

struct Node;
using NodeP = std::shared_ptr<Node>;

struct Node {
  enum Kind {
    // Statements.
    Block,     // c: statements
    Text,      // s
    Output,    // c[0]: expression
    If,        // c: cond, body, cond, body, ... [, else body when has_else]
    For,       // names: targets; c[0] iterable, c[1] body, c[2] else body (or null), c[3] inline condition (or null)
    Set,       // names: targets (or attr set: names[0] object, s attribute); c[0] value
    SetBlock,  // names[0]; c[0] body
    Macro,     // s name; names params; c[0] body, c[1 + k] default of param k (or null)
    Break,
    Continue,
    // Expressions.
    Literal,   // v
    Name,      // s
    Attr,      // c[0].s
    Item,      // c[0][c[1]]
    Slice,     // c[0][c[1]:c[2]:c[3]] (null parts)
    Call,      // c[0](c[1..]); kw[k] names argument c[1 + k] ("" positional)
    Filter,    // c[0] | s(c[1..]); kw as Call
    Test,      // c[0] is [not] s(c[1..])
    Unary,     // s op ("not", "-", "+"); c[0]
    Binary,    // s op; c[0], c[1]
    Cond,      // c[0] if c[1] else c[2] (c[2] may be null)
    ListLit,   // c
    DictLit,   // c: key, value, key, value, ...
  };
  Kind kind;
  int line = 0;
  std::string s;
  Value v;
  std::vector<NodeP> c;
  std::vector<std::string> names;
  std::vector<std::string> kw;
  bool has_else = false;
  bool neg = false;
};

// Parses a template (after preprocessing). Error "chat template line N: ...".
NodeP parse_template(const std::string& source);

}  // namespace tessera::jinja
