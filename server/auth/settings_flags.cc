#include "server/auth/settings_flags.h"

#include <algorithm>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "google/protobuf/descriptor.h"

namespace deltaserve::auth {
namespace {

using google::protobuf::FieldDescriptor;

// FlagText: a field's value as the flag's parser reads it (repeated fields comma-separated).
std::string FlagText(const google::protobuf::Message& message, const FieldDescriptor* field) {
  const google::protobuf::Reflection* reflection = message.GetReflection();
  if (field->is_repeated()) {
    std::vector<std::string> values;
    for (int i = 0; i < reflection->FieldSize(message, field); ++i) {
      values.push_back(reflection->GetRepeatedString(message, field, i));
    }
    return absl::StrJoin(values, ",");
  }
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_STRING: return reflection->GetString(message, field);
    case FieldDescriptor::CPPTYPE_INT32: return absl::StrCat(reflection->GetInt32(message, field));
    case FieldDescriptor::CPPTYPE_INT64: return absl::StrCat(reflection->GetInt64(message, field));
    case FieldDescriptor::CPPTYPE_BOOL: return reflection->GetBool(message, field) ? "true" : "false";
    case FieldDescriptor::CPPTYPE_DOUBLE: return absl::StrCat(reflection->GetDouble(message, field));
    default: return "";
  }
}

// GivenOnCommandLine: whether `arguments` set the flag `name`.
bool GivenOnCommandLine(const std::string& name, const std::vector<std::string>& arguments) {
  for (const std::string& argument : arguments) {
    if (argument == "--") break;
    absl::string_view flag(argument);
    if (!absl::ConsumePrefix(&flag, "-")) continue;
    absl::ConsumePrefix(&flag, "-");
    flag = flag.substr(0, flag.find('='));
    if (flag == name || (absl::ConsumePrefix(&flag, "no") && flag == name)) return true;
  }
  return false;
}

}  // namespace

absl::Status ApplySettingsToFlags(const deltaserve::v1::ServerSettings& settings, const std::string& source,
                                  const std::vector<std::string>& arguments) {
  std::vector<const FieldDescriptor*> fields;
  settings.GetReflection()->ListFields(settings, &fields);
  for (const FieldDescriptor* field : fields) {
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(field->name());
    if (flag == nullptr) {
      return absl::InternalError(absl::StrCat(source, ": server.", field->name(), " has no flag of its name"));
    }
    if (GivenOnCommandLine(field->name(), arguments)) continue;
    std::string error;
    if (!flag->ParseFrom(FlagText(settings, field), &error)) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": server.", field->name(), ": ", error));
    }
  }
  return absl::OkStatus();
}

std::vector<std::string> FlagsWithoutSettings(const std::string& file_suffix, const std::vector<std::string>& except) {
  const google::protobuf::Descriptor* descriptor = deltaserve::v1::ServerSettings::descriptor();
  std::vector<std::string> missing;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (!absl::EndsWith(flag->Filename(), file_suffix)) continue;
    if (std::find(except.begin(), except.end(), std::string(name)) != except.end()) continue;
    if (descriptor->FindFieldByName(std::string(name)) == nullptr) missing.emplace_back(name);
  }
  std::sort(missing.begin(), missing.end());
  return missing;
}

}  // namespace deltaserve::auth
