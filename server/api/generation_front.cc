#include "server/api/generation_front.h"

#include <algorithm>
#include <optional>

#include "absl/strings/str_cat.h"
#include "server/common/log.h"
#include "server/common/status_macros.h"
#include "server/engine/logit_adjustments.h"
#include "server/model/utf8_stream.h"

namespace deltaserve::api {

GenerationFront::GenerationFront(engine::Engine* engine, const control::VariantRegistry* variants,
                                 const ServingState* state, const Gatekeeper* gate, std::string base_model_name)
    : engine_(engine), variants_(variants), state_(state), gate_(gate), base_model_name_(std::move(base_model_name)) {}

absl::StatusOr<Access> GenerationFront::Admit(std::string_view authorization) const {
  if (state_->draining()) return absl::UnavailableError("the server is shutting down");
  return gate_->AdmitAuthorization(authorization);
}

absl::StatusOr<std::shared_ptr<const control::Variant>> GenerationFront::ResolveVariant(
    const std::string& variant) const {
  if (IsBase(variant)) return nullptr;
  std::shared_ptr<const control::Variant> found = variants_->Find(variant);
  if (found == nullptr && fetcher_) {
    absl::Status fetched = fetcher_(variant);
    if (!fetched.ok() && !absl::IsNotFound(fetched)) return fetched;
    found = variants_->Find(variant);
  }
  if (found != nullptr) {
    RETURN_IF_ERROR(control::CheckServable(*found));
    return found;
  }
  return absl::NotFoundError(absl::StrCat("variant \"", variant, "\" does not exist (the base model is \"",
                                          base_model_name_, "\" or an empty variant)"));
}

absl::Status GenerationFront::CheckTextSize(std::string_view text, std::string_view field) const {
  const int64_t context = engine_->model().config().MaxContextLength();
  const int64_t limit = std::max<int64_t>(int64_t{64} << 10, 32 * context);
  if (static_cast<int64_t>(text.size()) <= limit) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(std::string(field), " is ", text.size(), " bytes; at most ", limit,
                                                 " are accepted (32 bytes per token of the model's ", context,
                                                 "-token context)"));
}

absl::StatusOr<engine::EngineRequest> GenerationFront::Prepare(const Access& access, FrontRequest request,
                                                               std::shared_ptr<auth::RequestLease>* lease) {
  if (!IsBase(request.variant)) RETURN_IF_ERROR(access.CheckSee("variant", request.variant));
  if (request.request_id.size() > 128 || !model::IsValidUtf8(request.request_id) ||
      std::any_of(request.request_id.begin(), request.request_id.end(),
                  [](unsigned char c) { return c < 0x20 || c == 0x7f; })) {
    return absl::InvalidArgumentError("request_id must be valid UTF-8 of at most 128 bytes, without control characters");
  }
  ASSIGN_OR_RETURN(*lease, gate_->Lease(access));
  engine::EngineRequest result;
  result.kind = request.kind;
  result.tenant = access.principal().tenant;
  result.tenant_weight = access.principal().weight;
  result.tenant_max_queued = access.principal().quotas.max_queued_requests();
  ASSIGN_OR_RETURN(std::shared_ptr<const control::Variant> found, ResolveVariant(request.variant));
  if (found != nullptr) {
    result.adapter_id = found->adapter_id;
    result.variant_name = found->name;
    result.variant_version = found->version;
  }
  if (!request.text.empty() && !request.ids.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("set either ", request.text_field, " or ", request.ids_field, ", not both"));
  }
  if (!request.ids.empty()) {
    result.prompt_token_ids = std::move(request.ids);
  } else if (request.text.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the input is empty: set ", request.text_field, " or ", request.ids_field));
  } else {
    RETURN_IF_ERROR(CheckTextSize(request.text, request.text_field));
    ASSIGN_OR_RETURN(result.prompt_token_ids, engine_->tokenizer().EncodePrompt(request.text));
  }
  result.sampling = std::move(request.sampling);
  if (static_cast<int64_t>(request.bad_words.size()) > engine::kMaxBadWords) {
    return absl::InvalidArgumentError(
        absl::StrCat("at most ", engine::kMaxBadWords, " bad_words are allowed, got ", request.bad_words.size()));
  }
  for (const std::string& word : request.bad_words) {
    if (word.empty() || word.size() > 256) return absl::InvalidArgumentError("each of bad_words must be 1 to 256 bytes");
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, engine_->tokenizer().Encode(word));
    result.sampling.bad_words.push_back(std::move(ids));
  }
  result.deadline = request.deadline;
  result.request_id = request.request_id.empty() ? absl::StrCat("req-", next_request_number_++) : request.request_id;
  return result;
}

absl::StatusOr<uint64_t> GenerationFront::Submit(engine::EngineRequest request,
                                                 std::shared_ptr<engine::RequestSink> sink,
                                                 const std::function<void(const engine::EngineRequest&)>& resolved) {
  // When the engine no longer knows the adapter because the name switched to a new version
  // between resolving and submitting (replace_target retires the old adapter as soon as no
  // request uses it), resolve the name once more and submit to the version now current.
  std::optional<engine::EngineRequest> again;
  if (request.adapter_id != 0) again = request;
  if (resolved) resolved(request);
  absl::StatusOr<uint64_t> id = engine_->Submit(std::move(request), sink);
  if (!again.has_value() || !absl::IsNotFound(id.status())) return id;
  std::shared_ptr<const control::Variant> current = variants_->Find(again->variant_name);
  if (current == nullptr || current->adapter_id == again->adapter_id || !control::CheckServable(*current).ok()) {
    return id;
  }
  again->adapter_id = current->adapter_id;
  again->variant_version = current->version;
  if (resolved) resolved(*again);
  return engine_->Submit(std::move(*again), std::move(sink));
}

void GenerationFront::LogFinished(const Finished& finished) {
  common::Log("request finished",
              {{"api", finished.api},
               {"request_id", finished.request_id},
               {"tenant", finished.tenant.empty() ? "-" : finished.tenant},
               {"variant", finished.variant.empty() ? "-" : absl::StrCat(finished.variant, "@", finished.variant_version)},
               {"status", absl::StatusCodeToString(finished.status.code())},
               {"prompt_tokens", absl::StrCat(finished.usage.prompt_tokens)},
               {"cached_prompt_tokens", absl::StrCat(finished.usage.cached_prompt_tokens)},
               {"completion_tokens", absl::StrCat(finished.usage.completion_tokens)},
               {"ttft_s", absl::StrCat(finished.usage.time_to_first_token_seconds)},
               {"duration_s", absl::StrCat(absl::ToDoubleSeconds(finished.elapsed))}});
}

}  // namespace deltaserve::api
