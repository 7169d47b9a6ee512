// JinjaTemplate: the subset of Jinja2 that Hugging Face chat templates (tokenizer_config.json
// "chat_template") use, parsed once and rendered many times. Values are JSON values.
//
// Supported, with Hugging Face's settings (trim_blocks and lstrip_blocks on):
//   {{ expr }}, {# comment #}, whitespace control ({{- -}}, {%- -%});
//   {% if %}/{% elif %}/{% else %}/{% endif %}, {% for x in xs %} (also "for k, v in d.items()",
//   an "if" filter and {% else %}) with loop.index0/index/first/last/length/revindex,
//   {% set name = expr %} (scoped to the enclosing for, as in Jinja) and {% set ns.attr = expr %};
//   literals (strings, numbers, true/false/none, lists, dicts), names, x.attr, x[i], x[a:b],
//   + - * / // % ~, comparisons, in / not in, and / or / not, "a if c else b",
//   is [not] defined/none/string/number/mapping/iterable/sequence/boolean/true/false/odd/even,
//   filters trim length count tojson upper lower default first last string join list items,
//   string methods strip lstrip rstrip startswith endswith upper lower split replace title,
//   mapping methods items keys values get, and the functions raise_exception, namespace, range,
//   strftime_now (UTC).
// Anything else is INVALID_ARGUMENT at Parse with the offset and what was found, so a template
// either renders as Jinja would or is refused up front. Rendering errors (raise_exception, a
// type error, more than kMaxOutputBytes of output or kMaxSteps steps) are INVALID_ARGUMENT.
// Thread-safe after Parse (Render is const).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"

namespace deltaserve::model {
namespace jinja {
struct Node;  // jinja_syntax.h
}  // namespace jinja

class JinjaTemplate {
 public:
  using Value = nlohmann::ordered_json;
  static constexpr size_t kMaxOutputBytes = 4u << 20;
  static constexpr int64_t kMaxSteps = 1000000;

  static absl::StatusOr<JinjaTemplate> Parse(std::string_view source);
  // Render with `context`'s keys as the template's variables (an object).
  absl::StatusOr<std::string> Render(const Value& context) const;

 private:
  std::shared_ptr<const jinja::Node> root_;
};

}  // namespace deltaserve::model
