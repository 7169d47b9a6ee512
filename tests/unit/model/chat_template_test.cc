// JinjaTemplate and ChatTemplate against hand-written expected prompts for templates in the
// styles real Llama 2, Llama 3, Mistral and Qwen2 checkpoints ship, plus the subset's edges.
#include "server/model/chat_template.h"

#include <gtest/gtest.h>

#include "server/model/jinja_template.h"

namespace deltaserve::model {
namespace {

using Value = JinjaTemplate::Value;

std::string RenderOrDie(std::string_view source, const Value& context) {
  absl::StatusOr<JinjaTemplate> parsed = JinjaTemplate::Parse(source);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  if (!parsed.ok()) return "";
  absl::StatusOr<std::string> rendered = parsed->Render(context);
  EXPECT_TRUE(rendered.ok()) << rendered.status();
  return rendered.ok() ? *rendered : "";
}

std::vector<ChatMessage> Conversation() {
  return {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}, {"user", "Name a cat."}};
}

std::string Chat(std::string_view source, const std::vector<ChatMessage>& messages, bool add_generation_prompt = true) {
  absl::StatusOr<ChatTemplate> chat = ChatTemplate::FromSource(source, "<s>", "</s>");
  EXPECT_TRUE(chat.ok()) << chat.status();
  if (!chat.ok()) return "";
  absl::StatusOr<std::string> text = chat->Render(messages, add_generation_prompt);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : "";
}

TEST(JinjaTemplateTest, ExpressionsFollowJinjaSemantics) {
  const Value context = {{"xs", {1, 2, 3}}, {"name", " Ada "}, {"d", {{"a", 1}, {"b", "two"}}}};
  EXPECT_EQ(RenderOrDie("{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 * 3 + 1 }}", context), "3 -4 2 3.5 7");
  EXPECT_EQ(RenderOrDie("{{ xs | length }} {{ xs[-1] }} {{ xs[1:] }} {{ name | trim }} {{ name.strip().upper() }}", context),
            "3 3 [2, 3] Ada ADA");
  EXPECT_EQ(RenderOrDie("{{ 'a' if xs else 'b' }}{{ 'c' if missing is defined else 'd' }}{{ 1 in xs }}{{ 5 not in xs }}",
                        context),
            "adTrueTrue");
  EXPECT_EQ(RenderOrDie("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", context), "a=1;b=two;");
  EXPECT_EQ(RenderOrDie("{{ d | tojson }}|{{ none }}|{{ true and 'x' }}|{{ missing }}|{{ 'a' ~ 1 }}", context),
            "{\"a\": 1, \"b\": \"two\"}|None|x||a1");
  EXPECT_EQ(RenderOrDie("{% for x in xs if x != 2 %}{{ loop.index }}:{{ x }}{% if not loop.last %},{% endif %}{% endfor %}",
                        context),
            "1:1,2:3");
  EXPECT_EQ(RenderOrDie("{% for x in [] %}x{% else %}empty{% endfor %}", context), "empty");
  EXPECT_EQ(RenderOrDie("{{ strftime_now('%Y') | length }}", context), "4");
}

TEST(JinjaTemplateTest, SetIsScopedToTheLoopButNamespacesCarryOut) {
  const Value context = {{"xs", {1, 2, 3}}};
  EXPECT_EQ(RenderOrDie("{% set n = 0 %}{% for x in xs %}{% set n = n + x %}{% endfor %}{{ n }}", context), "0");
  EXPECT_EQ(RenderOrDie("{% set ns = namespace(n=0) %}{% for x in xs %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }}",
                        context),
            "6");
}

TEST(JinjaTemplateTest, WhitespaceControlTrimBlocksAndLstripBlocks) {
  const Value context = {{"xs", {"a", "b"}}};
  // trim_blocks drops the newline after a block tag; lstrip_blocks the indentation before one.
  EXPECT_EQ(RenderOrDie("{% for x in xs %}\n  {% if x %}\n{{ x }}\n  {% endif %}\n{% endfor %}\n", context), "a\nb\n");
  EXPECT_EQ(RenderOrDie("A  {{- ' B ' -}}  C {# note #}D", context), "A B C D");  // not at a line start
}

TEST(JinjaTemplateTest, RefusesWhatItDoesNotSupportAtParseTime) {
  for (const char* bad : {"{% macro m() %}{% endmacro %}", "{{ x | nosuchfilter }}x", "{% if x %}never closed",
                          "{{ 'unterminated }}", "{{ x $ y }}", "{% for x in xs %}{% endif %}"}) {
    absl::StatusOr<JinjaTemplate> parsed = JinjaTemplate::Parse(bad);
    if (parsed.ok()) {  // an unknown filter is only known at render time
      EXPECT_FALSE(parsed->Render(Value{{"x", 1}}).ok()) << bad;
    } else {
      EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad;
      const std::string message(parsed.status().message());
      EXPECT_TRUE(message.find("offset") != std::string::npos || message.find("endif") != std::string::npos) << message;
    }
  }
}

TEST(JinjaTemplateTest, StepAndOutputLimitsStopRunawayTemplates) {
  absl::StatusOr<JinjaTemplate> loop = JinjaTemplate::Parse(
      "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}");
  ASSERT_TRUE(loop.ok()) << loop.status();
  absl::StatusOr<std::string> rendered = loop->Render(Value::object());
  ASSERT_FALSE(rendered.ok());
  EXPECT_EQ(rendered.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ChatTemplateTest, Llama3StyleTemplate) {
  const char* source =
      "{% set loop_messages = messages %}{% for message in loop_messages %}"
      "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + "
      "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
      "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
  EXPECT_EQ(Chat(source, {{"user", " Hi "}}),
            "<s><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplateTest, Qwen2StyleTemplateAddsADefaultSystemPrompt) {
  const char* source =
      "{%- for message in messages %}\n"
      "    {%- if loop.first and messages[0]['role'] != 'system' %}\n"
      "        {{- '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}\n"
      "    {%- endif %}\n"
      "    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
      "{%- endfor %}\n"
      "{%- if add_generation_prompt %}\n"
      "    {{- '<|im_start|>assistant\\n' }}\n"
      "{%- endif %}\n";
  EXPECT_EQ(Chat(source, {{"user", "Hi"}}),
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(Chat(source, {{"system", "S"}, {"user", "Hi"}}, false),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
}

TEST(ChatTemplateTest, MistralStyleTemplateFoldsTheSystemPromptAndChecksAlternation) {
  const char* source =
      "{%- if messages[0]['role'] == 'system' %}\n"
      "    {%- set system_message = messages[0]['content'] %}\n"
      "    {%- set loop_messages = messages[1:] %}\n"
      "{%- else %}\n"
      "    {%- set loop_messages = messages %}\n"
      "{%- endif %}\n"
      "{{- bos_token }}\n"
      "{%- for message in loop_messages %}\n"
      "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
      "        {{- raise_exception('Conversation roles must alternate user/assistant') }}\n"
      "    {%- endif %}\n"
      "    {%- if message['role'] == 'user' %}\n"
      "        {%- if loop.first and system_message is defined %}\n"
      "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
      "        {%- else %}\n"
      "            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n"
      "        {%- endif %}\n"
      "    {%- elif message['role'] == 'assistant' %}\n"
      "        {{- ' ' + message['content'] + eos_token }}\n"
      "    {%- endif %}\n"
      "{%- endfor %}\n";
  EXPECT_EQ(Chat(source, Conversation()), "<s> [INST] Be brief.\n\nHi [/INST] Hello.</s> [INST] Name a cat. [/INST]");
  absl::StatusOr<ChatTemplate> chat = ChatTemplate::FromSource(source, "<s>", "</s>");
  ASSERT_TRUE(chat.ok());
  absl::StatusOr<std::string> refused = chat->Render({{"user", "a"}, {"user", "b"}}, true);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("must alternate"), std::string::npos) << refused.status();
}

TEST(ChatTemplateTest, FallbackTemplate) {
  EXPECT_EQ(Chat(ChatTemplate::kFallbackSource, {{"user", "Hi"}}), "<s>user: Hi\nassistant:");
}

}  // namespace
}  // namespace deltaserve::model
