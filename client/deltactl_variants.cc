#include "client/deltactl_variants.h"

#include <algorithm>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/deltactl_progress.h"
#include "client/deltactl_report.h"

ABSL_FLAG(std::string, prefix, "", "variants list: only names starting with this (e.g. acme/)");
ABSL_FLAG(bool, drain, false, "variants delete: stop new requests and wait for running ones");

namespace deltaserve::client {
namespace {

namespace v1 = deltaserve::v1;

std::string Ranks(const v1::Variant& variant) {
  std::vector<std::string> parts;
  for (const v1::ModuleRank& rank : variant.ranks()) parts.push_back(absl::StrCat(rank.module(), ":", rank.rank()));
  return parts.empty() ? "-" : absl::StrJoin(parts, ",");
}

const char* ResidencyName(v1::Residency residency) {
  switch (residency) {
    case v1::DEVICE: return "device";
    case v1::HOST: return "host";
    case v1::DISK: return "disk";
    default: return "unknown";
  }
}

void PrintLine(const v1::Variant& variant) {
  std::printf("%-40s %-8s %-6s %-6s %10.2f  %4ld  %s\n", variant.name().c_str(),
              v1::VariantKind_Name(variant.kind()).c_str(), ResidencyName(variant.residency()),
              variant.pinned() ? "yes" : "no", variant.size_bytes() / 1048576.0,
              static_cast<long>(variant.active_requests()), Ranks(variant).c_str());
}

// LineageChain: the variant's ancestry from the base model, following each variant's parents up
// (e.g. "base -> pets (FINETUNE, job-1) -> pets-edited@1 (EDIT, job-2) -> pets-edited (UNLEARN,
// job-3)"); a variant of several parents (a merge) shows them all and ends the walk.
std::string LineageChain(DeltaserveClient& client, const v1::Variant& variant) {
  auto step = [](const v1::Variant& v) {
    const std::string& job = v.lineage().job_id();
    return absl::StrCat(v.name(), " (", v1::VariantKind_Name(v.kind()), job.empty() ? "" : ", " + job, ")");
  };
  std::vector<std::string> chain = {step(variant)};
  v1::Variant current = variant;
  for (int hops = 0; hops < 32; ++hops) {
    const auto& parents = current.lineage().parents();
    if (parents.empty()) {
      chain.push_back("base");
      break;
    }
    if (parents.size() > 1) {
      chain.push_back("(" + absl::StrJoin(parents, " + ") + ")");
      break;
    }
    grpc::ClientContext context;
    v1::GetVariantRequest request;
    request.set_name(parents[0]);
    v1::Variant parent;
    if (!client.variants().GetVariant(&context, request, &parent).ok()) {
      chain.push_back(parents[0] + " (deleted)");
      break;
    }
    chain.push_back(step(parent));
    current = parent;
  }
  std::reverse(chain.begin(), chain.end());
  return absl::StrJoin(chain, " -> ");
}

// The evaluation of an edit: which edits hold, and the mean figures.
void PrintEditEvaluation(const nlohmann::json& evaluation) {
  std::printf("evaluation: %s, %d of %zu edits hold after %d update round(s)\n", evaluation.value("method", std::string("edit")).c_str(),
              evaluation.value("held", 0), evaluation["edits"].size(), evaluation.value("rounds", 1));
  for (const nlohmann::json& edit : evaluation["edits"]) {
    if (!edit.contains("after")) continue;
    std::printf("  %-24s -> %-16s %s (was %s)\n", edit.value("subject", std::string("?")).c_str(),
                nlohmann::json(edit.value("target", std::string())).dump().c_str(),
                edit.value("holds", edit["after"].value("efficacy", false)) ? "holds" : "does not hold",
                nlohmann::json(edit.value("original_answer", std::string())).dump().c_str());
  }
  if (evaluation.contains("mean")) std::printf("  mean: %s\n", evaluation["mean"].dump().c_str());
}

void PrintDetail(DeltaserveClient& client, const v1::Variant& variant) {
  std::printf("name:      %s\nversion:   %ld\nkind:      %s\nresidency: %s%s\nsize:      %ld bytes\nranks:     %s\n"
              "requests:  %ld active\nsource:    %s\ncreated:   %ld (Unix seconds)\n",
              variant.name().c_str(), static_cast<long>(variant.version()), v1::VariantKind_Name(variant.kind()).c_str(),
              ResidencyName(variant.residency()), variant.pinned() ? " (pinned)" : "",
              static_cast<long>(variant.size_bytes()), Ranks(variant).c_str(),
              static_cast<long>(variant.active_requests()), variant.uploaded() ? "uploaded" : "server path",
              static_cast<long>(variant.created().seconds()));
  if (!variant.base_model().empty()) std::printf("base:      %s\n", variant.base_model().c_str());
  if (variant.state() == v1::BROKEN) std::printf("state:     BROKEN: %s\n", variant.state_reason().c_str());
  const v1::Lineage& lineage = variant.lineage();
  if (lineage.parents_size() > 0 || !lineage.job_id().empty()) {
    std::printf("parents:   %s\njob:       %s\nlineage:   %s\nrecipe:    %s\n",
                lineage.parents_size() > 0 ? absl::StrJoin(lineage.parents(), ", ").c_str() : "(the base model)",
                lineage.job_id().empty() ? "-" : lineage.job_id().c_str(), LineageChain(client, variant).c_str(),
                lineage.recipe_json().c_str());
  }
  // The evaluation in brief: a merge's re-compression errors; other reports as they are.
  nlohmann::json evaluation = nlohmann::json::parse(variant.evaluation_json(), nullptr, false);
  if (evaluation.is_object() && evaluation.contains("max_relative_error") && evaluation.contains("modules")) {
    std::printf("evaluation: %s merge, relative error max %.4g, mean %.4g over %zu re-compressed modules\n",
                evaluation.value("exact", false) ? "exact" : "re-compressed",
                evaluation["max_relative_error"].get<double>(), evaluation["mean_relative_error"].get<double>(),
                evaluation["modules"].size());
  } else if (evaluation.is_object() && evaluation.contains("edits") && evaluation["edits"].is_array()) {
    PrintEditEvaluation(evaluation);
  } else if (evaluation.is_object() && evaluation.contains("before") && evaluation.contains("after")) {
    std::printf("evaluation: %s, before -> after:\n", evaluation.value("method", std::string("unlearning")).c_str());
    for (const char* part : {"", "recall"}) {
      const nlohmann::json& before = *part ? evaluation["before"].value(part, nlohmann::json::object()) : evaluation["before"];
      const nlohmann::json& after = *part ? evaluation["after"].value(part, nlohmann::json::object()) : evaluation["after"];
      for (const auto& [metric, value] : before.items()) {
        if (!value.is_number() || !after.contains(metric)) continue;
        std::printf("  %-24s %10.4g -> %.4g\n", (*part ? "recall." + metric : metric).c_str(), value.get<double>(),
                    after[metric].get<double>());
      }
    }
    if (evaluation.contains("goal")) {
      const nlohmann::json& goal = evaluation["goal"];
      std::printf("  goal: forget recall <= %g and retain recall >= %g of the target's (%s): %s at step %ld\n",
                  goal.value("forget_recall_max", 0.0), goal.value("retain_floor", 0.0),
                  goal.value("recall_metric", std::string("exact")).c_str(), goal.value("met", false) ? "met" : "not met",
                  static_cast<long>(goal.value("chosen_step", 0)));
    }
    if (evaluation.contains("tokens_per_second")) {
      std::printf("  trained %ld steps at %.0f tokens/s\n", static_cast<long>(evaluation.value("steps", 0)),
                  evaluation["tokens_per_second"].get<double>());
    }
  } else if (evaluation.is_object() && evaluation.contains("train_loss")) {
    std::printf("evaluation: train loss %.4g -> %.4g over %ld steps (%.0f tokens/s)", evaluation["train_loss"]["first"].get<double>(),
                evaluation["train_loss"]["last"].get<double>(), static_cast<long>(evaluation.value("steps", 0)),
                evaluation.value("tokens_per_second", 0.0));
    if (evaluation.contains("validation_loss")) {
      std::printf("; validation loss %.4g -> %.4g", evaluation["validation_loss"]["before"].get<double>(),
                  evaluation["validation_loss"]["after"].get<double>());
    }
    std::printf("\n");
  } else if (!variant.evaluation_json().empty() && variant.evaluation_json() != "{}") {
    std::printf("evaluation: %s\n", variant.evaluation_json().c_str());
  }
}

int List(DeltaserveClient& client) {
  v1::ListVariantsRequest request;
  request.set_prefix(absl::GetFlag(FLAGS_prefix));
  std::printf("%-40s %-8s %-6s %-6s %10s  %4s  %s\n", "NAME", "KIND", "WHERE", "PINNED", "SIZE_MIB",
              "REQS", "RANKS");
  do {
    grpc::ClientContext context;
    v1::ListVariantsResponse response;
    grpc::Status status = client.variants().ListVariants(&context, request, &response);
    if (!status.ok()) return ReportStatus(client, status);
    for (const v1::Variant& variant : response.variants()) PrintLine(variant);
    request.set_page_token(response.next_page_token());
  } while (!request.page_token().empty());
  return 0;
}

}  // namespace

int RunVariantsCommand(DeltaserveClient& client, const std::vector<std::string>& arguments) {
  const std::string command = arguments.empty() ? "" : arguments[0];
  auto usage = [](const char* text) {
    std::fprintf(stderr, "usage: deltactl variants %s\n", text);
    return 2;
  };
  if (command == "list") return List(client);
  if (arguments.size() < 2) {
    return usage("list|get|register|upload|delete|pin|unpin NAME [PATH]");
  }
  const std::string& name = arguments[1];
  grpc::ClientContext context;
  v1::Variant variant;
  grpc::Status status;
  if (command == "get") {
    v1::GetVariantRequest request;
    request.set_name(name);
    status = client.variants().GetVariant(&context, request, &variant);
  } else if (command == "register" || command == "upload") {
    if (arguments.size() != 3) return usage(command == "register" ? "register NAME PATH" : "upload NAME DIR");
    if (command == "upload") {
      ProgressDisplay progress("upload " + name);
      status = client.UploadAdapter(name, arguments[2], &variant, 1 << 20,
                                    [&progress](int64_t sent, int64_t total) { progress.Update(sent, total); });
      progress.Finish();
    } else {
      v1::RegisterAdapterRequest request;
      request.set_name(name);
      request.set_path(arguments[2]);
      status = client.variants().RegisterAdapter(&context, request, &variant);
    }
  } else if (command == "delete") {
    v1::DeleteVariantRequest request;
    request.set_name(name);
    request.set_drain(absl::GetFlag(FLAGS_drain));
    v1::DeleteVariantResponse response;
    status = client.variants().DeleteVariant(&context, request, &response);
    if (status.ok()) std::printf("deleted %s\n", name.c_str());
    return ReportStatus(client, status);
  } else if (command == "pin") {
    v1::PinVariantRequest request;
    request.set_name(name);
    status = client.variants().PinVariant(&context, request, &variant);
  } else if (command == "unpin") {
    v1::UnpinVariantRequest request;
    request.set_name(name);
    status = client.variants().UnpinVariant(&context, request, &variant);
  } else {
    return usage("list|get|register|upload|delete|pin|unpin NAME [PATH]");
  }
  if (status.ok()) PrintDetail(client, variant);
  return ReportStatus(client, status);
}

}  // namespace deltaserve::client
