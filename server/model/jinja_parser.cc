#include <cctype>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/common/status_macros.h"
#include "server/model/jinja_syntax.h"

namespace deltaserve::model::jinja {
namespace {

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

}  // namespace

absl::StatusOr<std::unique_ptr<Node>> ParseTemplate(std::string_view source) {
  ASSIGN_OR_RETURN(std::vector<Piece> pieces, Split(source));
  StatementParser parser(std::move(pieces));
  return parser.ParseAll();
}

}  // namespace deltaserve::model::jinja
