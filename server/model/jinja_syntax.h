// The parsed form of a JinjaTemplate (jinja_template.h), shared by its parser
// (jinja_parser.cc) and its renderer (jinja_template.cc); not for other users.
//   Expr  an expression tree: literals, names, x.attr, x[i], x[a:b], calls, filters, tests,
//         unary and binary operators, "a if c else b".
//   Node  a statement tree: text, {{ output }}, if, for, set, and blocks of them.
// ParseTemplate applies whitespace control (with trim_blocks and lstrip_blocks, as Hugging Face
// renders chat templates) and parses; INVALID_ARGUMENT with the offset for anything outside the
// subset.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"

namespace deltaserve::model::jinja {

using Value = nlohmann::ordered_json;

enum class Ex { kLiteral, kName, kList, kDict, kAttr, kIndex, kSlice, kCall, kFilter, kTest, kUnary, kBinary, kCond };

struct Expr {
  Ex kind;
  std::string name;   // name, attribute, operator, filter or test
  Value literal;      // kLiteral
  std::vector<std::unique_ptr<Expr>> args;  // operands; for kDict alternating keys and values
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> kwargs;  // kCall, kFilter
  bool negated = false;  // kTest: "is not"
  size_t offset = 0;     // in the template source
};
using ExprPtr = std::unique_ptr<Expr>;

enum class St { kBlock, kText, kOutput, kIf, kFor, kSet };

struct Node {
  St kind = St::kBlock;
  std::string text;                        // kText
  std::vector<std::string> targets;        // kFor: loop variables; kSet: name [, attribute]
  std::vector<ExprPtr> exprs;              // kOutput: value; kIf: conditions; kFor: iterable [, filter]; kSet: value
  std::vector<std::unique_ptr<Node>> children;  // kBlock: statements; kIf: bodies (one more than
                                                // conditions when there is an else); kFor: body [, else]
};

// Undefined: the value of a name or attribute that does not exist (a discarded JSON value).
inline Value Undefined() { return Value(Value::value_t::discarded); }
inline bool IsUndefined(const Value& value) { return value.is_discarded(); }

absl::StatusOr<std::unique_ptr<Node>> ParseTemplate(std::string_view source);

}  // namespace deltaserve::model::jinja
