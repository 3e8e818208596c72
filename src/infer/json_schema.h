// JSON Schema -> GBNF (infer/grammar.h), for --json-schema: the output is a
// JSON value the schema accepts. Supported: type (one or a list), object
// (properties in their order, required, additionalProperties: false by
// default as llama.cpp, true or a schema for extra keys), array (items,
// minItems, maxItems), string (minLength, maxLength, format date / time /
// date-time / uuid), integer, number, boolean, null, enum, const, anyOf /
// oneOf, $ref into #/$defs or #/definitions (nesting and recursion), and {}
// for any value. Annotations (title, description, default, examples,
// $schema, $id, $comment) are ignored; any other keyword is an Error naming
// it and where it is, rather than a grammar that silently allows more.
#pragma once
#include <string>

namespace tessera {

// GBNF text for the schema in schema_json (JSON text); Error naming where on
// invalid JSON or an unsupported construct.
std::string json_schema_to_gbnf(const std::string& schema_json, const std::string& where);

}  // namespace tessera
