#include "server/model/jinja_template.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "server/common/status_macros.h"

namespace deltaserve::model {

using Value = JinjaTemplate::Value;

namespace {

Value Undefined() { return Value(Value::value_t::discarded); }
bool IsUndefined(const Value& value) { return value.is_discarded(); }

// ---------------------------------------------------------------- expression tokens

enum class Tok { kName, kString, kInt, kFloat, kOp, kEnd };

struct Token {
  Tok kind;
  std::string text;
  size_t offset;  // in the template source
};

absl::StatusOr<std::vector<Token>> Tokenize(std::string_view code, size_t base) {
  std::vector<Token> tokens;
  size_t i = 0;
  while (i < code.size()) {
    const char c = code[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
      continue;
    }
    const size_t start = i;
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      while (i < code.size() && (std::isalnum(static_cast<unsigned char>(code[i])) || code[i] == '_')) ++i;
      tokens.push_back({Tok::kName, std::string(code.substr(start, i - start)), base + start});
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      while (i < code.size() && std::isdigit(static_cast<unsigned char>(code[i]))) ++i;
      bool is_float = false;
      if (i + 1 < code.size() && code[i] == '.' && std::isdigit(static_cast<unsigned char>(code[i + 1]))) {
        is_float = true;
        ++i;
        while (i < code.size() && std::isdigit(static_cast<unsigned char>(code[i]))) ++i;
      }
      tokens.push_back({is_float ? Tok::kFloat : Tok::kInt, std::string(code.substr(start, i - start)), base + start});
    } else if (c == '\'' || c == '"') {
      std::string text;
      ++i;
      while (i < code.size() && code[i] != c) {
        if (code[i] == '\\' && i + 1 < code.size()) {
          const char e = code[++i];
          switch (e) {
            case 'n': text += '\n'; break;
            case 't': text += '\t'; break;
            case 'r': text += '\r'; break;
            default: text += e;
          }
        } else {
          text += code[i];
        }
        ++i;
      }
      if (i >= code.size()) return absl::InvalidArgumentError(absl::StrCat("unterminated string at offset ", base + start));
      ++i;
      tokens.push_back({Tok::kString, std::move(text), base + start});
    } else {
      static const char* kTwo[] = {"==", "!=", "<=", ">=", "//", "**"};
      std::string op(1, c);
      for (const char* two : kTwo) {
        if (code.substr(i, 2) == two) op = two;
      }
      if (op.size() == 1 && std::string_view("()[]{}.,:|+-*/%~<>=").find(c) == std::string_view::npos) {
        return absl::InvalidArgumentError(absl::StrCat("unexpected character '", std::string(1, c), "' at offset ", base + i));
      }
      i += op.size();
      tokens.push_back({Tok::kOp, op, base + start});
    }
  }
  tokens.push_back({Tok::kEnd, "", base + code.size()});
  return tokens;
}

// ---------------------------------------------------------------- expressions

enum class Ex { kLiteral, kName, kList, kDict, kAttr, kIndex, kSlice, kCall, kFilter, kTest, kUnary, kBinary, kCond };

struct Expr {
  Ex kind;
  std::string name;   // name, attribute, operator, filter or test
  Value literal;      // kLiteral
  std::vector<std::unique_ptr<Expr>> args;  // operands; for kDict alternating keys and values
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> kwargs;  // kCall, kFilter
  bool negated = false;  // kTest: "is not"
  size_t offset = 0;
};
using ExprPtr = std::unique_ptr<Expr>;

ExprPtr MakeExpr(Ex kind, size_t offset, std::string name = "") {
  auto expr = std::make_unique<Expr>();
  expr->kind = kind;
  expr->offset = offset;
  expr->name = std::move(name);
  return expr;
}

class ExprParser {
 public:
  explicit ExprParser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  const Token& Peek(size_t ahead = 0) const { return tokens_[std::min(pos_ + ahead, tokens_.size() - 1)]; }
  bool AtEnd() const { return Peek().kind == Tok::kEnd; }
  bool IsOp(const char* op, size_t ahead = 0) const { return Peek(ahead).kind == Tok::kOp && Peek(ahead).text == op; }
  bool IsName(const char* name, size_t ahead = 0) const {
    return Peek(ahead).kind == Tok::kName && Peek(ahead).text == name;
  }
  const Token& Next() { return tokens_[std::min(pos_++, tokens_.size() - 1)]; }

  absl::Status Error(const std::string& expected) const {
    const Token& token = Peek();
    return absl::InvalidArgumentError(absl::StrCat("expected ", expected, " at offset ", token.offset, ", found ",
                                                   token.kind == Tok::kEnd ? "the end of the tag" : "'" + token.text + "'"));
  }
  absl::Status Expect(const char* op) {
    if (!IsOp(op)) return Error(absl::StrCat("'", op, "'"));
    Next();
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> ExpectName() {
    if (Peek().kind != Tok::kName) return Error("a name");
    return Next().text;
  }

  // expr := or ["if" or "else" expr]
  absl::StatusOr<ExprPtr> Parse() {
    ASSIGN_OR_RETURN(ExprPtr value, ParseOr());
    if (!IsName("if")) return value;
    const size_t offset = Next().offset;
    ASSIGN_OR_RETURN(ExprPtr condition, ParseOr());
    ExprPtr otherwise;
    if (IsName("else")) {
      Next();
      ASSIGN_OR_RETURN(otherwise, Parse());
    } else {
      otherwise = MakeExpr(Ex::kLiteral, offset);
      otherwise->literal = Undefined();
    }
    ExprPtr result = MakeExpr(Ex::kCond, offset);
    result->args.push_back(std::move(condition));
    result->args.push_back(std::move(value));
    result->args.push_back(std::move(otherwise));
    return result;
  }

  // The primary expression of a filter's or a for loop's operand: no "if" conditional.
  absl::StatusOr<ExprPtr> ParseOr() {
    ASSIGN_OR_RETURN(ExprPtr left, ParseAnd());
    while (IsName("or")) {
      ASSIGN_OR_RETURN(left, Binary("or", std::move(left), &ExprParser::ParseAnd));
    }
    return left;
  }

 private:
  absl::StatusOr<ExprPtr> Binary(const std::string& op, ExprPtr left, absl::StatusOr<ExprPtr> (ExprParser::*next)()) {
    const size_t offset = Next().offset;
    ASSIGN_OR_RETURN(ExprPtr right, (this->*next)());
    ExprPtr result = MakeExpr(Ex::kBinary, offset, op);
    result->args.push_back(std::move(left));
    result->args.push_back(std::move(right));
    return result;
  }

  absl::StatusOr<ExprPtr> ParseAnd() {
    ASSIGN_OR_RETURN(ExprPtr left, ParseNot());
    while (IsName("and")) {
      ASSIGN_OR_RETURN(left, Binary("and", std::move(left), &ExprParser::ParseNot));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseNot() {
    if (!IsName("not")) return ParseCompare();
    const size_t offset = Next().offset;
    ASSIGN_OR_RETURN(ExprPtr operand, ParseNot());
    ExprPtr result = MakeExpr(Ex::kUnary, offset, "not");
    result->args.push_back(std::move(operand));
    return result;
  }

  absl::StatusOr<ExprPtr> ParseCompare() {
    ASSIGN_OR_RETURN(ExprPtr left, ParseAdd());
    while (true) {
      if (IsOp("==") || IsOp("!=") || IsOp("<") || IsOp(">") || IsOp("<=") || IsOp(">=") || IsName("in")) {
        const std::string op = Peek().text;
        ASSIGN_OR_RETURN(left, Binary(op, std::move(left), &ExprParser::ParseAdd));
      } else if (IsName("not") && IsName("in", 1)) {
        Next();
        ASSIGN_OR_RETURN(left, Binary("not in", std::move(left), &ExprParser::ParseAdd));
      } else if (IsName("is")) {
        const size_t offset = Next().offset;
        bool negated = false;
        if (IsName("not")) {
          Next();
          negated = true;
        }
        // "none", "true" and "false" are names of tests here, not literals.
        ASSIGN_OR_RETURN(std::string test, ExpectName());
        ExprPtr result = MakeExpr(Ex::kTest, offset, absl::AsciiStrToLower(test));
        result->negated = negated;
        result->args.push_back(std::move(left));
        left = std::move(result);
      } else {
        return left;
      }
    }
  }

  absl::StatusOr<ExprPtr> ParseAdd() {
    ASSIGN_OR_RETURN(ExprPtr left, ParseMul());
    while (IsOp("+") || IsOp("-") || IsOp("~")) {
      const std::string op = Peek().text;
      ASSIGN_OR_RETURN(left, Binary(op, std::move(left), &ExprParser::ParseMul));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseMul() {
    ASSIGN_OR_RETURN(ExprPtr left, ParseUnary());
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      const std::string op = Peek().text;
      ASSIGN_OR_RETURN(left, Binary(op, std::move(left), &ExprParser::ParseUnary));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseUnary() {
    if (!IsOp("-") && !IsOp("+")) return ParsePostfix();
    const Token& op = Next();
    ASSIGN_OR_RETURN(ExprPtr operand, ParseUnary());
    ExprPtr result = MakeExpr(Ex::kUnary, op.offset, op.text);
    result->args.push_back(std::move(operand));
    return result;
  }

  absl::Status ParseArguments(Expr* call) {
    RETURN_IF_ERROR(Expect("("));
    while (!IsOp(")")) {
      if (Peek().kind == Tok::kName && IsOp("=", 1)) {
        std::string key = Next().text;
        Next();
        ASSIGN_OR_RETURN(ExprPtr value, Parse());
        call->kwargs.emplace_back(std::move(key), std::move(value));
      } else {
        ASSIGN_OR_RETURN(ExprPtr value, Parse());
        call->args.push_back(std::move(value));
      }
      if (!IsOp(",")) break;
      Next();
    }
    return Expect(")");
  }

  absl::StatusOr<ExprPtr> ParsePostfix() {
    ASSIGN_OR_RETURN(ExprPtr value, ParsePrimary());
    while (true) {
      if (IsOp(".")) {
        const size_t offset = Next().offset;
        ASSIGN_OR_RETURN(std::string attribute, ExpectName());
        ExprPtr result = MakeExpr(Ex::kAttr, offset, attribute);
        result->args.push_back(std::move(value));
        value = std::move(result);
      } else if (IsOp("[")) {
        const size_t offset = Next().offset;
        ExprPtr start, stop;
        if (!IsOp(":")) {
          ASSIGN_OR_RETURN(start, Parse());
        }
        if (IsOp(":")) {
          Next();
          if (!IsOp("]")) {
            ASSIGN_OR_RETURN(stop, Parse());
          }
          ExprPtr result = MakeExpr(Ex::kSlice, offset);
          result->args.push_back(std::move(value));
          result->args.push_back(std::move(start));
          result->args.push_back(std::move(stop));
          value = std::move(result);
        } else {
          ExprPtr result = MakeExpr(Ex::kIndex, offset);
          result->args.push_back(std::move(value));
          result->args.push_back(std::move(start));
          value = std::move(result);
        }
        RETURN_IF_ERROR(Expect("]"));
      } else if (IsOp("(")) {
        ExprPtr result = MakeExpr(Ex::kCall, Peek().offset);
        result->args.push_back(std::move(value));
        RETURN_IF_ERROR(ParseArguments(result.get()));
        value = std::move(result);
      } else if (IsOp("|")) {
        const size_t offset = Next().offset;
        ASSIGN_OR_RETURN(std::string filter, ExpectName());
        ExprPtr result = MakeExpr(Ex::kFilter, offset, filter);
        result->args.push_back(std::move(value));
        if (IsOp("(")) RETURN_IF_ERROR(ParseArguments(result.get()));
        value = std::move(result);
      } else {
        return value;
      }
    }
  }

  absl::StatusOr<ExprPtr> ParsePrimary() {
    const Token& token = Peek();
    ExprPtr result = MakeExpr(Ex::kLiteral, token.offset);
    switch (token.kind) {
      case Tok::kString:
        result->literal = Next().text;
        while (Peek().kind == Tok::kString) result->literal = result->literal.get<std::string>() + Next().text;
        return result;
      case Tok::kInt:
        result->literal = std::stoll(Next().text);
        return result;
      case Tok::kFloat:
        result->literal = std::stod(Next().text);
        return result;
      case Tok::kName: {
        const std::string name = Next().text;
        if (name == "true" || name == "True") result->literal = true;
        else if (name == "false" || name == "False") result->literal = false;
        else if (name == "none" || name == "None") result->literal = nullptr;
        else return MakeExpr(Ex::kName, token.offset, name);
        return result;
      }
      case Tok::kOp:
        if (IsOp("(")) {
          Next();
          ASSIGN_OR_RETURN(ExprPtr inner, Parse());
          RETURN_IF_ERROR(Expect(")"));
          return inner;
        }
        if (IsOp("[") || IsOp("{")) {
          const bool is_list = IsOp("[");
          Next();
          ExprPtr collection = MakeExpr(is_list ? Ex::kList : Ex::kDict, token.offset);
          while (!IsOp(is_list ? "]" : "}")) {
            ASSIGN_OR_RETURN(ExprPtr item, Parse());
            collection->args.push_back(std::move(item));
            if (!is_list) {
              RETURN_IF_ERROR(Expect(":"));
              ASSIGN_OR_RETURN(ExprPtr value, Parse());
              collection->args.push_back(std::move(value));
            }
            if (!IsOp(",")) break;
            Next();
          }
          RETURN_IF_ERROR(Expect(is_list ? "]" : "}"));
          return collection;
        }
        break;
      case Tok::kEnd:
        break;
    }
    return Error("a value");
  }

  std::vector<Token> tokens_;
  size_t pos_ = 0;
};

}  // namespace

// ---------------------------------------------------------------- statements

enum class St { kBlock, kText, kOutput, kIf, kFor, kSet };

struct JinjaTemplate::Node {
  St kind = St::kBlock;
  std::string text;                        // kText
  std::vector<std::string> targets;        // kFor: loop variables; kSet: name [, attribute]
  std::vector<ExprPtr> exprs;              // kOutput: value; kIf: conditions; kFor: iterable [, filter]; kSet: value
  std::vector<std::unique_ptr<Node>> children;  // kBlock: statements; kIf: bodies (one more than
                                                // conditions when there is an else); kFor: body [, else]
};

namespace {

using Node = JinjaTemplate::Node;
using NodePtr = std::unique_ptr<Node>;

struct Piece {
  enum Kind { kText, kExpr, kStmt } kind;
  std::string text;
  size_t offset;
};

bool IsHorizontalSpace(char c) { return c == ' ' || c == '\t'; }

// Split splits the source into text, {{ }} and {% %} pieces (comments dropped), applying
// whitespace control, trim_blocks and lstrip_blocks.
absl::StatusOr<std::vector<Piece>> Split(std::string_view source) {
  std::vector<Piece> pieces;
  size_t pos = 0;
  bool strip_next = false;    // a "-" closed the previous tag
  bool trim_newline = false;  // the previous tag was a block or comment (trim_blocks)
  while (pos <= source.size()) {
    size_t open = source.find('{', pos);
    while (open != std::string_view::npos && open + 1 < source.size() && source[open + 1] != '{' &&
           source[open + 1] != '%' && source[open + 1] != '#') {
      open = source.find('{', open + 1);
    }
    if (open != std::string_view::npos && open + 1 >= source.size()) open = std::string_view::npos;
    std::string text(source.substr(pos, open == std::string_view::npos ? std::string_view::npos : open - pos));
    if (trim_newline && !strip_next) {
      if (absl::StartsWith(text, "\n")) text.erase(0, 1);
      else if (absl::StartsWith(text, "\r\n")) text.erase(0, 2);
    }
    if (strip_next) text = std::string(absl::StripLeadingAsciiWhitespace(text));
    if (open == std::string_view::npos) {
      if (!text.empty()) pieces.push_back({Piece::kText, std::move(text), pos});
      break;
    }
    const char type = source[open + 1];
    const bool strip_before = open + 2 < source.size() && source[open + 2] == '-';
    if (strip_before) {
      text = std::string(absl::StripTrailingAsciiWhitespace(text));
    } else if (type != '{' && !(open + 2 < source.size() && source[open + 2] == '+')) {
      // lstrip_blocks: spaces and tabs between a line's start and a block tag go.
      size_t line_start = open;
      while (line_start > pos && IsHorizontalSpace(source[line_start - 1])) --line_start;
      if (line_start == 0 || source[line_start - 1] == '\n') {
        while (!text.empty() && IsHorizontalSpace(text.back())) text.pop_back();
      }
    }
    if (!text.empty()) pieces.push_back({Piece::kText, std::move(text), pos});
    const std::string_view close = type == '{' ? "}}" : type == '%' ? "%}" : "#}";
    const size_t end = source.find(close, open + 2);
    if (end == std::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("the tag at offset ", open, " is never closed with \"", std::string(close), "\""));
    }
    size_t inner_begin = open + 2 + ((strip_before || (open + 2 < source.size() && source[open + 2] == '+')) ? 1 : 0);
    size_t inner_end = end;
    strip_next = end > inner_begin && source[end - 1] == '-';
    if (strip_next) --inner_end;
    if (type != '#') {
      pieces.push_back({type == '{' ? Piece::kExpr : Piece::kStmt,
                        std::string(source.substr(inner_begin, inner_end - inner_begin)), inner_begin});
    }
    trim_newline = type != '{';
    pos = end + 2;
  }
  return pieces;
}

class StatementParser {
 public:
  explicit StatementParser(std::vector<Piece> pieces) : pieces_(std::move(pieces)) {}

  absl::StatusOr<NodePtr> ParseAll() {
    std::string end;
    ASSIGN_OR_RETURN(NodePtr block, ParseBlock({}, &end));
    return block;
  }

 private:
  // ParseBlock parses statements until one whose keyword is in `stops`, whose parser is left
  // in *parser_out (positioned after the keyword) with the keyword in *stop.
  absl::StatusOr<NodePtr> ParseBlock(const std::vector<std::string>& stops, std::string* stop,
                                     std::unique_ptr<ExprParser>* parser_out = nullptr) {
    auto block = std::make_unique<Node>();
    while (index_ < pieces_.size()) {
      const Piece& piece = pieces_[index_++];
      if (piece.kind == Piece::kText) {
        auto text = std::make_unique<Node>();
        text->kind = St::kText;
        text->text = piece.text;
        block->children.push_back(std::move(text));
        continue;
      }
      ASSIGN_OR_RETURN(std::vector<Token> tokens, Tokenize(piece.text, piece.offset));
      auto parser = std::make_unique<ExprParser>(std::move(tokens));
      if (piece.kind == Piece::kExpr) {
        auto output = std::make_unique<Node>();
        output->kind = St::kOutput;
        ASSIGN_OR_RETURN(ExprPtr value, parser->Parse());
        if (!parser->AtEnd()) return parser->Error("'}}'");
        output->exprs.push_back(std::move(value));
        block->children.push_back(std::move(output));
        continue;
      }
      ASSIGN_OR_RETURN(std::string keyword, parser->ExpectName());
      if (std::find(stops.begin(), stops.end(), keyword) != stops.end()) {
        *stop = keyword;
        if (parser_out != nullptr) *parser_out = std::move(parser);
        return block;
      }
      NodePtr statement;
      if (keyword == "if") {
        ASSIGN_OR_RETURN(statement, ParseIf(*parser));
      } else if (keyword == "for") {
        ASSIGN_OR_RETURN(statement, ParseFor(*parser));
      } else if (keyword == "set") {
        ASSIGN_OR_RETURN(statement, ParseSet(*parser));
      } else {
        return absl::InvalidArgumentError(absl::StrCat("unsupported statement \"", keyword, "\" at offset ",
                                                       piece.offset, (stops.empty() ? "" : absl::StrCat(" (expected ", absl::StrJoin(stops, " or "), ")"))));
      }
      block->children.push_back(std::move(statement));
    }
    if (!stops.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("the template ends before {% ", stops.back(), " %}"));
    }
    return block;
  }

  static absl::Status ExpectTagEnd(const ExprParser& parser) {
    return parser.AtEnd() ? absl::OkStatus() : parser.Error("'%}'");
  }

  absl::StatusOr<NodePtr> ParseIf(ExprParser& parser) {
    auto node = std::make_unique<Node>();
    node->kind = St::kIf;
    ASSIGN_OR_RETURN(ExprPtr condition, parser.Parse());
    RETURN_IF_ERROR(ExpectTagEnd(parser));
    node->exprs.push_back(std::move(condition));
    while (true) {
      std::string stop;
      std::unique_ptr<ExprParser> next;
      ASSIGN_OR_RETURN(NodePtr body, ParseBlock({"elif", "else", "endif"}, &stop, &next));
      node->children.push_back(std::move(body));
      if (stop == "elif") {
        ASSIGN_OR_RETURN(ExprPtr more, next->Parse());
        RETURN_IF_ERROR(ExpectTagEnd(*next));
        node->exprs.push_back(std::move(more));
        continue;
      }
      RETURN_IF_ERROR(ExpectTagEnd(*next));
      if (stop == "else") {
        ASSIGN_OR_RETURN(NodePtr otherwise, ParseBlock({"endif"}, &stop, &next));
        RETURN_IF_ERROR(ExpectTagEnd(*next));
        node->children.push_back(std::move(otherwise));
      }
      return node;
    }
  }

  absl::StatusOr<NodePtr> ParseFor(ExprParser& parser) {
    auto node = std::make_unique<Node>();
    node->kind = St::kFor;
    ASSIGN_OR_RETURN(std::string first, parser.ExpectName());
    node->targets.push_back(first);
    if (parser.IsOp(",")) {
      parser.Next();
      ASSIGN_OR_RETURN(std::string second, parser.ExpectName());
      node->targets.push_back(second);
    }
    if (!parser.IsName("in")) return parser.Error("'in'");
    parser.Next();
    ASSIGN_OR_RETURN(ExprPtr iterable, parser.ParseOr());
    node->exprs.push_back(std::move(iterable));
    if (parser.IsName("if")) {
      parser.Next();
      ASSIGN_OR_RETURN(ExprPtr filter, parser.Parse());
      node->exprs.push_back(std::move(filter));
    }
    RETURN_IF_ERROR(ExpectTagEnd(parser));
    std::string stop;
    std::unique_ptr<ExprParser> next;
    ASSIGN_OR_RETURN(NodePtr body, ParseBlock({"else", "endfor"}, &stop, &next));
    RETURN_IF_ERROR(ExpectTagEnd(*next));
    node->children.push_back(std::move(body));
    if (stop == "else") {
      ASSIGN_OR_RETURN(NodePtr otherwise, ParseBlock({"endfor"}, &stop, &next));
      RETURN_IF_ERROR(ExpectTagEnd(*next));
      node->children.push_back(std::move(otherwise));
    }
    return node;
  }

  absl::StatusOr<NodePtr> ParseSet(ExprParser& parser) {
    auto node = std::make_unique<Node>();
    node->kind = St::kSet;
    ASSIGN_OR_RETURN(std::string name, parser.ExpectName());
    node->targets.push_back(name);
    if (parser.IsOp(".")) {
      parser.Next();
      ASSIGN_OR_RETURN(std::string attribute, parser.ExpectName());
      node->targets.push_back(attribute);
    }
    if (!parser.IsOp("=")) return parser.Error("'=' (block assignments are not supported)");
    parser.Next();
    ASSIGN_OR_RETURN(ExprPtr value, parser.Parse());
    RETURN_IF_ERROR(ExpectTagEnd(parser));
    node->exprs.push_back(std::move(value));
    return node;
  }

  std::vector<Piece> pieces_;
  size_t index_ = 0;
};

// ---------------------------------------------------------------- values

bool Truthy(const Value& value) {
  switch (value.type()) {
    case Value::value_t::null:
    case Value::value_t::discarded: return false;
    case Value::value_t::boolean: return value.get<bool>();
    case Value::value_t::number_integer:
    case Value::value_t::number_unsigned: return value.get<int64_t>() != 0;
    case Value::value_t::number_float: return value.get<double>() != 0.0;
    case Value::value_t::string: return !value.get_ref<const std::string&>().empty();
    case Value::value_t::array:
    case Value::value_t::object: return !value.empty();
    default: return true;
  }
}

std::string PythonRepr(const Value& value, bool quote_strings);

std::string FloatText(double number) {
  if (std::isfinite(number) && number == std::floor(number) && std::fabs(number) < 1e16) {
    return absl::StrCat(static_cast<int64_t>(number), ".0");
  }
  return absl::StrCat(number);
}

std::string PythonRepr(const Value& value, bool quote_strings) {
  switch (value.type()) {
    case Value::value_t::discarded: return "";
    case Value::value_t::null: return "None";
    case Value::value_t::boolean: return value.get<bool>() ? "True" : "False";
    case Value::value_t::number_float: return FloatText(value.get<double>());
    case Value::value_t::string:
      return quote_strings ? absl::StrCat("'", value.get<std::string>(), "'") : value.get<std::string>();
    case Value::value_t::array: {
      std::vector<std::string> items;
      for (const Value& item : value) items.push_back(PythonRepr(item, true));
      return absl::StrCat("[", absl::StrJoin(items, ", "), "]");
    }
    case Value::value_t::object: {
      std::vector<std::string> items;
      for (auto it = value.begin(); it != value.end(); ++it) {
        items.push_back(absl::StrCat("'", it.key(), "': ", PythonRepr(it.value(), true)));
      }
      return absl::StrCat("{", absl::StrJoin(items, ", "), "}");
    }
    default: return value.dump();
  }
}

// ToJson writes JSON as Python's json.dumps(ensure_ascii=False) does: ", " and ": " separators,
// or newlines and `indent` spaces when indent > 0.
void ToJson(const Value& value, int indent, int depth, std::string* out) {
  const std::string newline = indent > 0 ? "\n" + std::string(static_cast<size_t>(indent * (depth + 1)), ' ') : "";
  const std::string closing = indent > 0 ? "\n" + std::string(static_cast<size_t>(indent * depth), ' ') : "";
  const char* separator = indent > 0 ? "," : ", ";
  if (value.is_array() && !value.empty()) {
    *out += "[";
    for (size_t i = 0; i < value.size(); ++i) {
      if (i > 0) *out += separator;
      *out += newline;
      ToJson(value[i], indent, depth + 1, out);
    }
    *out += closing + "]";
  } else if (value.is_object() && !value.empty()) {
    *out += "{";
    bool first = true;
    for (auto it = value.begin(); it != value.end(); ++it) {
      if (!first) *out += separator;
      first = false;
      *out += newline + Value(it.key()).dump(-1, ' ', false, Value::error_handler_t::replace) + ": ";
      ToJson(it.value(), indent, depth + 1, out);
    }
    *out += closing + "}";
  } else if (value.is_number_float()) {
    *out += FloatText(value.get<double>());
  } else if (value.is_discarded()) {
    *out += "null";
  } else {
    *out += value.dump(-1, ' ', false, Value::error_handler_t::replace);
  }
}

const char* TypeName(const Value& value) {
  if (value.is_discarded()) return "undefined";
  return value.type_name();
}

// ---------------------------------------------------------------- rendering

class Renderer {
 public:
  explicit Renderer(const Value& context) { scopes_.push_back(context.is_object() ? context : Value::object()); }

  absl::Status Run(const Node& node) {
    RETURN_IF_ERROR(Step());
    switch (node.kind) {
      case St::kBlock:
        for (const auto& child : node.children) RETURN_IF_ERROR(Run(*child));
        return absl::OkStatus();
      case St::kText:
        return Append(node.text);
      case St::kOutput: {
        ASSIGN_OR_RETURN(Value value, Eval(*node.exprs[0]));
        return Append(PythonRepr(value, false));
      }
      case St::kIf:
        for (size_t i = 0; i < node.exprs.size(); ++i) {
          ASSIGN_OR_RETURN(Value condition, Eval(*node.exprs[i]));
          if (Truthy(condition)) return Run(*node.children[i]);
        }
        if (node.children.size() > node.exprs.size()) return Run(*node.children.back());
        return absl::OkStatus();
      case St::kFor:
        return RunFor(node);
      case St::kSet: {
        ASSIGN_OR_RETURN(Value value, Eval(*node.exprs[0]));
        if (node.targets.size() == 1) {
          scopes_.back()[node.targets[0]] = std::move(value);
          return absl::OkStatus();
        }
        Value* object = Lookup(node.targets[0]);
        if (object == nullptr || !object->is_object()) {
          return absl::InvalidArgumentError(absl::StrCat("cannot set an attribute of \"", node.targets[0], "\", which is not a namespace"));
        }
        (*object)[node.targets[1]] = std::move(value);
        return absl::OkStatus();
      }
    }
    return absl::OkStatus();
  }

  std::string TakeOutput() { return std::move(output_); }

 private:
  absl::Status Step() {
    if (++steps_ > JinjaTemplate::kMaxSteps) {
      return absl::InvalidArgumentError(absl::StrCat("the template took more than ", JinjaTemplate::kMaxSteps, " steps"));
    }
    return absl::OkStatus();
  }

  absl::Status Append(const std::string& text) {
    output_ += text;
    if (output_.size() > JinjaTemplate::kMaxOutputBytes) {
      return absl::InvalidArgumentError(absl::StrCat("the rendered template exceeds ", JinjaTemplate::kMaxOutputBytes, " bytes"));
    }
    return absl::OkStatus();
  }

  Value* Lookup(const std::string& name) {
    for (auto scope = scopes_.rbegin(); scope != scopes_.rend(); ++scope) {
      auto found = scope->find(name);
      if (found != scope->end()) return &*found;
    }
    return nullptr;
  }

  absl::Status RunFor(const Node& node) {
    ASSIGN_OR_RETURN(Value iterable, Eval(*node.exprs[0]));
    std::vector<Value> items;
    if (iterable.is_array()) {
      items.assign(iterable.begin(), iterable.end());
    } else if (iterable.is_object()) {
      for (auto it = iterable.begin(); it != iterable.end(); ++it) items.push_back(it.key());
    } else if (iterable.is_string()) {
      for (char c : iterable.get<std::string>()) items.push_back(std::string(1, c));
    } else if (!IsUndefined(iterable) && !iterable.is_null()) {
      return absl::InvalidArgumentError(absl::StrCat("cannot loop over a ", TypeName(iterable)));
    }
    scopes_.push_back(Value::object());
    auto bind = [&](const Value& item) -> absl::Status {
      if (node.targets.size() == 1) {
        scopes_.back()[node.targets[0]] = item;
      } else {
        if (!item.is_array() || item.size() != 2) {
          return absl::InvalidArgumentError("a two-name for loop needs pairs (use .items())");
        }
        scopes_.back()[node.targets[0]] = item[0];
        scopes_.back()[node.targets[1]] = item[1];
      }
      return absl::OkStatus();
    };
    if (node.exprs.size() > 1) {
      std::vector<Value> kept;
      for (const Value& item : items) {
        RETURN_IF_ERROR(bind(item));
        ASSIGN_OR_RETURN(Value keep, Eval(*node.exprs[1]));
        if (Truthy(keep)) kept.push_back(item);
      }
      items = std::move(kept);
    }
    const int64_t length = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < length; ++i) {
      RETURN_IF_ERROR(bind(items[static_cast<size_t>(i)]));
      scopes_.back()["loop"] = Value{{"index0", i},          {"index", i + 1},
                                     {"first", i == 0},      {"last", i + 1 == length},
                                     {"length", length},     {"revindex", length - i},
                                     {"revindex0", length - i - 1}};
      RETURN_IF_ERROR(Run(*node.children[0]));
    }
    scopes_.pop_back();
    if (length == 0 && node.children.size() > 1) return Run(*node.children[1]);
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<Value>> EvalArgs(const Expr& expr, size_t first) {
    std::vector<Value> values;
    for (size_t i = first; i < expr.args.size(); ++i) {
      ASSIGN_OR_RETURN(Value value, Eval(*expr.args[i]));
      values.push_back(std::move(value));
    }
    return values;
  }

  static absl::Status Error(const Expr& expr, const std::string& message) {
    return absl::InvalidArgumentError(absl::StrCat(message, " (at offset ", expr.offset, ")"));
  }

  static absl::StatusOr<int64_t> Index(const Expr& expr, const Value& value, int64_t size, bool clamp) {
    if (!value.is_number_integer()) return Error(expr, "an index must be an integer");
    int64_t index = value.get<int64_t>();
    if (index < 0) index += size;
    if (clamp) index = std::clamp<int64_t>(index, 0, size);
    return index;
  }

  absl::StatusOr<Value> Eval(const Expr& expr) {
    RETURN_IF_ERROR(Step());
    switch (expr.kind) {
      case Ex::kLiteral: return expr.literal;
      case Ex::kName: {
        const Value* found = Lookup(expr.name);
        return found == nullptr ? Undefined() : *found;
      }
      case Ex::kList: {
        ASSIGN_OR_RETURN(std::vector<Value> items, EvalArgs(expr, 0));
        return Value(items);
      }
      case Ex::kDict: {
        Value object = Value::object();
        for (size_t i = 0; i + 1 < expr.args.size(); i += 2) {
          ASSIGN_OR_RETURN(Value key, Eval(*expr.args[i]));
          if (!key.is_string()) return Error(expr, "dictionary keys must be strings");
          ASSIGN_OR_RETURN(object[key.get<std::string>()], Eval(*expr.args[i + 1]));
        }
        return object;
      }
      case Ex::kAttr: {
        ASSIGN_OR_RETURN(Value object, Eval(*expr.args[0]));
        if (object.is_object() && object.contains(expr.name)) return object[expr.name];
        return Undefined();
      }
      case Ex::kIndex: {
        ASSIGN_OR_RETURN(Value object, Eval(*expr.args[0]));
        ASSIGN_OR_RETURN(Value key, Eval(*expr.args[1]));
        if (object.is_object()) {
          if (key.is_string() && object.contains(key.get<std::string>())) return object[key.get<std::string>()];
          return Undefined();
        }
        if (object.is_array() || object.is_string()) {
          const int64_t size = static_cast<int64_t>(object.is_array() ? object.size() : object.get<std::string>().size());
          ASSIGN_OR_RETURN(int64_t index, Index(expr, key, size, false));
          if (index < 0 || index >= size) return Undefined();
          if (object.is_array()) return object[static_cast<size_t>(index)];
          return Value(std::string(1, object.get<std::string>()[static_cast<size_t>(index)]));
        }
        return Undefined();
      }
      case Ex::kSlice: return EvalSlice(expr);
      case Ex::kCall: return EvalCall(expr);
      case Ex::kFilter: return EvalFilter(expr);
      case Ex::kTest: return EvalTest(expr);
      case Ex::kUnary: {
        ASSIGN_OR_RETURN(Value operand, Eval(*expr.args[0]));
        if (expr.name == "not") return Value(!Truthy(operand));
        if (!operand.is_number()) return Error(expr, absl::StrCat("unary ", expr.name, " needs a number"));
        if (expr.name == "+") return operand;
        if (operand.is_number_float()) return Value(-operand.get<double>());
        return Value(-operand.get<int64_t>());
      }
      case Ex::kCond: {
        ASSIGN_OR_RETURN(Value condition, Eval(*expr.args[0]));
        return Eval(*expr.args[Truthy(condition) ? 1 : 2]);
      }
      case Ex::kBinary: return EvalBinary(expr);
    }
    return Undefined();
  }

  absl::StatusOr<Value> EvalSlice(const Expr& expr) {
    ASSIGN_OR_RETURN(Value object, Eval(*expr.args[0]));
    if (!object.is_array() && !object.is_string()) return Error(expr, absl::StrCat("cannot slice a ", TypeName(object)));
    const int64_t size = static_cast<int64_t>(object.is_array() ? object.size() : object.get<std::string>().size());
    int64_t start = 0, stop = size;
    if (expr.args[1] != nullptr) {
      ASSIGN_OR_RETURN(Value value, Eval(*expr.args[1]));
      ASSIGN_OR_RETURN(start, Index(expr, value, size, true));
    }
    if (expr.args[2] != nullptr) {
      ASSIGN_OR_RETURN(Value value, Eval(*expr.args[2]));
      ASSIGN_OR_RETURN(stop, Index(expr, value, size, true));
    }
    stop = std::max(stop, start);
    if (object.is_string()) return Value(object.get<std::string>().substr(static_cast<size_t>(start), static_cast<size_t>(stop - start)));
    return Value(std::vector<Value>(object.begin() + start, object.begin() + stop));
  }

  absl::StatusOr<Value> EvalBinary(const Expr& expr) {
    const std::string& op = expr.name;
    ASSIGN_OR_RETURN(Value left, Eval(*expr.args[0]));
    if (op == "and" && !Truthy(left)) return left;
    if (op == "or" && Truthy(left)) return left;
    ASSIGN_OR_RETURN(Value right, Eval(*expr.args[1]));
    if (op == "and" || op == "or") return right;
    if (op == "==") return Value(left == right);
    if (op == "!=") return Value(!(left == right));
    if (op == "~") return Value(PythonRepr(left, false) + PythonRepr(right, false));
    if (op == "in" || op == "not in") {
      bool found = false;
      if (right.is_string() && left.is_string()) {
        found = right.get<std::string>().find(left.get<std::string>()) != std::string::npos;
      } else if (right.is_array()) {
        found = std::find(right.begin(), right.end(), left) != right.end();
      } else if (right.is_object()) {
        found = left.is_string() && right.contains(left.get<std::string>());
      } else if (!IsUndefined(right) && !right.is_null()) {
        return Error(expr, absl::StrCat("\"in\" needs a string, list or mapping, not a ", TypeName(right)));
      }
      return Value(op == "in" ? found : !found);
    }
    if (op == "+" && left.is_string() && right.is_string()) return Value(left.get<std::string>() + right.get<std::string>());
    if (op == "+" && left.is_array() && right.is_array()) {
      Value joined = left;
      for (const Value& item : right) joined.push_back(item);
      return joined;
    }
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      if (!((left.is_number() && right.is_number()) || (left.is_string() && right.is_string()))) {
        return Error(expr, absl::StrCat("cannot compare a ", TypeName(left), " with a ", TypeName(right)));
      }
      if (op == "<") return Value(left < right);
      if (op == ">") return Value(right < left);
      if (op == "<=") return Value(!(right < left));
      return Value(!(left < right));
    }
    if (!left.is_number() || !right.is_number()) {
      return Error(expr, absl::StrCat("\"", op, "\" cannot combine a ", TypeName(left), " with a ", TypeName(right)));
    }
    const bool integers = left.is_number_integer() && right.is_number_integer();
    const double a = left.get<double>(), b = right.get<double>();
    if ((op == "/" || op == "//" || op == "%") && b == 0) return Error(expr, "division by zero");
    if (integers && op != "/") {
      const int64_t x = left.get<int64_t>(), y = right.get<int64_t>();
      if (op == "+") return Value(x + y);
      if (op == "-") return Value(x - y);
      if (op == "*") return Value(x * y);
      const int64_t floor_div = x / y - ((x % y != 0) && ((x < 0) != (y < 0)) ? 1 : 0);
      if (op == "//") return Value(floor_div);
      return Value(x - floor_div * y);  // Python's %, sign of the divisor
    }
    if (op == "+") return Value(a + b);
    if (op == "-") return Value(a - b);
    if (op == "*") return Value(a * b);
    if (op == "/") return Value(a / b);
    if (op == "//") return Value(std::floor(a / b));
    if (op == "%") return Value(a - std::floor(a / b) * b);
    return Error(expr, absl::StrCat("unsupported operator \"", op, "\""));
  }

  absl::StatusOr<Value> EvalTest(const Expr& expr) {
    ASSIGN_OR_RETURN(Value value, Eval(*expr.args[0]));
    bool result;
    const std::string& test = expr.name;
    if (test == "defined") result = !IsUndefined(value);
    else if (test == "undefined") result = IsUndefined(value);
    else if (test == "none") result = value.is_null();
    else if (test == "string") result = value.is_string();
    else if (test == "number") result = value.is_number();
    else if (test == "integer") result = value.is_number_integer();
    else if (test == "float") result = value.is_number_float();
    else if (test == "boolean") result = value.is_boolean();
    else if (test == "true") result = value.is_boolean() && value.get<bool>();
    else if (test == "false") result = value.is_boolean() && !value.get<bool>();
    else if (test == "mapping") result = value.is_object();
    else if (test == "sequence") result = value.is_array() || value.is_string();
    else if (test == "iterable") result = value.is_array() || value.is_string() || value.is_object();
    else if (test == "odd" || test == "even") {
      if (!value.is_number_integer()) return Error(expr, absl::StrCat("\"is ", test, "\" needs an integer"));
      result = (value.get<int64_t>() % 2 != 0) == (test == "odd");
    } else {
      return Error(expr, absl::StrCat("unsupported test \"", test, "\""));
    }
    return Value(result != expr.negated);
  }

  absl::StatusOr<Value> EvalFilter(const Expr& expr) {
    ASSIGN_OR_RETURN(Value value, Eval(*expr.args[0]));
    ASSIGN_OR_RETURN(std::vector<Value> args, EvalArgs(expr, 1));
    const std::string& filter = expr.name;
    if (filter == "trim") return Value(std::string(absl::StripAsciiWhitespace(PythonRepr(value, false))));
    if (filter == "upper") return Value(absl::AsciiStrToUpper(PythonRepr(value, false)));
    if (filter == "lower") return Value(absl::AsciiStrToLower(PythonRepr(value, false)));
    if (filter == "string") return Value(PythonRepr(value, false));
    if (filter == "length" || filter == "count") {
      if (value.is_string()) return Value(static_cast<int64_t>(value.get<std::string>().size()));
      if (value.is_array() || value.is_object()) return Value(static_cast<int64_t>(value.size()));
      return Error(expr, absl::StrCat("a ", TypeName(value), " has no length"));
    }
    if (filter == "default" || filter == "d") {
      const bool boolean = args.size() > 1 && Truthy(args[1]);
      if (IsUndefined(value) || (boolean && !Truthy(value))) return args.empty() ? Value("") : args[0];
      return value;
    }
    if (filter == "first" || filter == "last") {
      if (!value.is_array() || value.empty()) return Undefined();
      return filter == "first" ? value.front() : value.back();
    }
    if (filter == "list") {
      if (value.is_array()) return value;
      Value list = Value::array();
      if (value.is_string()) {
        for (char c : value.get<std::string>()) list.push_back(std::string(1, c));
      }
      return list;
    }
    if (filter == "items") return Items(expr, value);
    if (filter == "join") {
      if (!value.is_array()) return Error(expr, "join needs a list");
      std::vector<std::string> parts;
      for (const Value& item : value) parts.push_back(PythonRepr(item, false));
      return Value(absl::StrJoin(parts, args.empty() ? "" : PythonRepr(args[0], false)));
    }
    if (filter == "tojson") {
      int indent = 0;
      for (const auto& [key, argument] : expr.kwargs) {
        ASSIGN_OR_RETURN(Value given, Eval(*argument));
        if (key == "indent" && given.is_number_integer()) indent = static_cast<int>(given.get<int64_t>());
      }
      if (!args.empty() && args[0].is_number_integer()) indent = static_cast<int>(args[0].get<int64_t>());
      std::string out;
      ToJson(value, indent, 0, &out);
      return Value(out);
    }
    return Error(expr, absl::StrCat("unsupported filter \"", filter, "\""));
  }

  static absl::StatusOr<Value> Items(const Expr& expr, const Value& value) {
    if (!value.is_object()) return Error(expr, absl::StrCat("a ", TypeName(value), " has no items"));
    Value pairs = Value::array();
    for (auto it = value.begin(); it != value.end(); ++it) pairs.push_back(Value::array({it.key(), it.value()}));
    return pairs;
  }

  absl::StatusOr<Value> EvalCall(const Expr& expr) {
    const Expr& callee = *expr.args[0];
    ASSIGN_OR_RETURN(std::vector<Value> args, EvalArgs(expr, 1));
    if (callee.kind == Ex::kName) {
      if (callee.name == "raise_exception") {
        return absl::InvalidArgumentError(absl::StrCat("the chat template refused the conversation: ",
                                                       args.empty() ? "" : PythonRepr(args[0], false)));
      }
      if (callee.name == "namespace") {
        Value object = Value::object();
        for (const auto& [key, argument] : expr.kwargs) {
          ASSIGN_OR_RETURN(object[key], Eval(*argument));
        }
        return object;
      }
      if (callee.name == "range") {
        if (args.empty() || args.size() > 2 || !args[0].is_number_integer() || !args.back().is_number_integer()) {
          return Error(expr, "range takes one or two integers");
        }
        const int64_t start = args.size() == 2 ? args[0].get<int64_t>() : 0;
        const int64_t stop = args.back().get<int64_t>();
        if (stop - start > 100000) return Error(expr, "range is limited to 100000 items");
        Value list = Value::array();
        for (int64_t i = start; i < stop; ++i) list.push_back(i);
        return list;
      }
      return Error(expr, absl::StrCat("unsupported function \"", callee.name, "\""));
    }
    if (callee.kind != Ex::kAttr) return Error(expr, "only functions and methods can be called");
    ASSIGN_OR_RETURN(Value object, Eval(*callee.args[0]));
    const std::string& method = callee.name;
    if (object.is_string()) {
      const std::string text = object.get<std::string>();
      auto arg_text = [&](size_t i) { return i < args.size() && args[i].is_string() ? args[i].get<std::string>() : std::string(); };
      if (method == "strip") return Value(std::string(absl::StripAsciiWhitespace(text)));
      if (method == "lstrip") return Value(std::string(absl::StripLeadingAsciiWhitespace(text)));
      if (method == "rstrip") return Value(std::string(absl::StripTrailingAsciiWhitespace(text)));
      if (method == "upper") return Value(absl::AsciiStrToUpper(text));
      if (method == "lower") return Value(absl::AsciiStrToLower(text));
      if (method == "title") {
        std::string titled = text;
        bool start = true;
        for (char& c : titled) {
          c = start ? absl::ascii_toupper(c) : absl::ascii_tolower(c);
          start = !absl::ascii_isalpha(c);
        }
        return Value(titled);
      }
      if (method == "startswith") return Value(absl::StartsWith(text, arg_text(0)));
      if (method == "endswith") return Value(absl::EndsWith(text, arg_text(0)));
      if (method == "replace") return Value(absl::StrReplaceAll(text, {{arg_text(0), arg_text(1)}}));
      if (method == "split") {
        Value parts = Value::array();
        if (args.empty()) {
          for (absl::string_view part : absl::StrSplit(text, absl::ByAnyChar(" \t\n\r"), absl::SkipEmpty())) {
            parts.push_back(std::string(part));
          }
        } else {
          if (arg_text(0).empty()) return Error(expr, "split needs a non-empty separator");
          for (absl::string_view part : absl::StrSplit(text, arg_text(0))) parts.push_back(std::string(part));
        }
        return parts;
      }
    }
    if (object.is_object()) {
      if (method == "items") return Items(expr, object);
      if (method == "keys" || method == "values") {
        Value list = Value::array();
        for (auto it = object.begin(); it != object.end(); ++it) list.push_back(method == "keys" ? Value(it.key()) : it.value());
        return list;
      }
      if (method == "get") {
        if (args.empty() || !args[0].is_string()) return Error(expr, "get takes a key");
        if (object.contains(args[0].get<std::string>())) return object[args[0].get<std::string>()];
        return args.size() > 1 ? args[1] : Value(nullptr);
      }
    }
    return Error(expr, absl::StrCat("a ", TypeName(object), " has no method \"", method, "\""));
  }

  std::vector<Value> scopes_;  // innermost last
  std::string output_;
  int64_t steps_ = 0;
};

}  // namespace

absl::StatusOr<JinjaTemplate> JinjaTemplate::Parse(std::string_view source) {
  ASSIGN_OR_RETURN(std::vector<Piece> pieces, Split(source));
  StatementParser parser(std::move(pieces));
  ASSIGN_OR_RETURN(NodePtr root, parser.ParseAll());
  JinjaTemplate result;
  result.root_ = std::shared_ptr<const Node>(std::move(root));
  return result;
}

absl::StatusOr<std::string> JinjaTemplate::Render(const Value& context) const {
  Renderer renderer(context);
  RETURN_IF_ERROR(renderer.Run(*root_));
  return renderer.TakeOutput();
}

}  // namespace deltaserve::model
