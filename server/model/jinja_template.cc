#include "server/model/jinja_template.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/common/status_macros.h"
#include "server/model/jinja_syntax.h"

namespace deltaserve::model {

using jinja::Ex;
using jinja::Expr;
using jinja::IsUndefined;
using jinja::Node;
using jinja::St;
using jinja::Undefined;
using Value = JinjaTemplate::Value;

namespace {

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
      if (callee.name == "strftime_now") {  // Llama 3.1-style templates date their system prompt
        if (args.size() != 1 || !args[0].is_string()) return Error(expr, "strftime_now takes one format string");
        return Value(absl::FormatTime(args[0].get<std::string>(), absl::Now(), absl::UTCTimeZone()));
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
  ASSIGN_OR_RETURN(std::unique_ptr<Node> root, jinja::ParseTemplate(source));
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
