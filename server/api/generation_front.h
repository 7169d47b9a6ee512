// GenerationFront: what every front end (the gRPC Generation service, the OpenAI-compatible
// HTTP API) does to run a request on the engine, written once so that both answer alike:
//   Admit    the serving check (UNAVAILABLE while draining) and the caller's API key;
//   Prepare  the variant (visible to the caller, servable; "" or the base model's name = base),
//            the tenant's quota lease, the input (text or token ids, exactly one), a request id;
//   Submit   the engine request, re-resolving the variant once when replace_target switched it
//            to a new version in between.
// Thread-safe; everything it points to must outlive it.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "server/api/access.h"
#include "server/api/serving_state.h"
#include "server/control/variant_registry.h"
#include "server/engine/engine.h"

namespace deltaserve::api {

// A request as front ends describe it, before admission.
struct FrontRequest {
  engine::RequestKind kind = engine::RequestKind::kGenerate;
  std::string variant;
  // The input: exactly one of text and ids. Text is encoded with BOS when the model expects it.
  std::string text;
  std::vector<int32_t> ids;
  // The field names errors about the input use ("prompt", "prompt_token_ids").
  const char* text_field = "prompt";
  const char* ids_field = "prompt_token_ids";
  engine::SamplingOptions sampling;
  // Texts never to generate, encoded (without BOS) into sampling.bad_words: write them as they
  // would appear in the output, with a leading space where a word follows another.
  std::vector<std::string> bad_words;
  std::string request_id;  // "" = one is made up
  absl::Time deadline = absl::InfiniteFuture();
};

class GenerationFront {
 public:
  GenerationFront(engine::Engine* engine, const control::VariantRegistry* variants, const ServingState* state,
                  const Gatekeeper* gate, std::string base_model_name);

  // Admit: UNAVAILABLE while draining, else the caller of `authorization` ("Bearer KEY").
  absl::StatusOr<Access> Admit(std::string_view authorization) const;
  // Prepare: the engine request of an admitted caller's `request`; *lease receives the tenant's
  // quota slot, to hold until the request is over.
  absl::StatusOr<engine::EngineRequest> Prepare(const Access& access, FrontRequest request,
                                                std::shared_ptr<auth::RequestLease>* lease);
  // Submit: the engine's id of the submitted request. `resolved` sees the request finally
  // submitted (its variant version), before the engine can answer it.
  absl::StatusOr<uint64_t> Submit(engine::EngineRequest request, std::shared_ptr<engine::RequestSink> sink,
                                  const std::function<void(const engine::EngineRequest&)>& resolved = {});
  void Cancel(uint64_t engine_id) { engine_->Cancel(engine_id); }

  // What the request log says about one finished request (one line per request, both APIs).
  struct Finished {
    const char* api = "";  // "grpc", "http"
    std::string request_id;
    std::string tenant;
    std::string variant;  // "" = base
    int64_t variant_version = 0;
    absl::Status status;
    engine::Usage usage;
    absl::Duration elapsed;
  };
  static void LogFinished(const Finished& finished);

  // SetFetcher: how to bring in a variant this replica does not know yet (--shared-dir);
  // NOT_FOUND from it means there is none. Set before serving.
  void SetFetcher(std::function<absl::Status(const std::string&)> fetcher) { fetcher_ = std::move(fetcher); }

  // ResolveVariant: the variant (null for the base model), NOT_FOUND, or FAILED_PRECONDITION
  // when it is not servable (or, fetched from the shared directory, fails its content hashes).
  absl::StatusOr<std::shared_ptr<const control::Variant>> ResolveVariant(const std::string& variant) const;
  bool IsBase(const std::string& variant) const { return variant.empty() || variant == base_model_name_; }

  const std::string& base_model_name() const { return base_model_name_; }
  const model::Tokenizer& tokenizer() const { return engine_->tokenizer(); }
  const control::VariantRegistry& variants() const { return *variants_; }

  // CheckTextSize: INVALID_ARGUMENT when `text` (the request field `field`) is longer than any
  // text that fits the model's context: 32 bytes per token of it, at least 64 KiB. Tokenizing
  // is linear in the text, so this bounds the work of a prompt or a Tokenize before it starts.
  absl::Status CheckTextSize(std::string_view text, std::string_view field) const;

 private:
  engine::Engine* engine_;
  const control::VariantRegistry* variants_;
  const ServingState* state_;
  const Gatekeeper* gate_;
  std::string base_model_name_;
  std::function<absl::Status(const std::string&)> fetcher_;
  std::atomic<uint64_t> next_request_number_{1};  // for requests that bring no id
};

}  // namespace deltaserve::api
