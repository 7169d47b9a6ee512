// The SentencePiece shim module (see sentencepiece_shim_api.h). Includes no Abseil header.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include "server/model/sentencepiece_shim_api.h"

namespace deltaserve::model::sentencepiece_bridge {
namespace {

class Processor final : public ShimProcessor {
 public:
  sentencepiece::SentencePieceProcessor processor;
  bool Encode(const std::string& text, std::vector<int>* ids, std::string* error) const override {
    sentencepiece::util::Status status = processor.Encode(text, ids);
    if (!status.ok()) *error = status.ToString();
    return status.ok();
  }
  int PieceSize() const override { return processor.GetPieceSize(); }
  std::string IdToPiece(int id) const override { return processor.IdToPiece(id); }
  bool IsControl(int id) const override { return processor.IsControl(id); }
  bool IsUnknown(int id) const override { return processor.IsUnknown(id); }
  bool IsUnused(int id) const override { return processor.IsUnused(id); }
  bool IsByte(int id) const override { return processor.IsByte(id); }
  int BosId() const override { return processor.bos_id(); }
  int EosId() const override { return processor.eos_id(); }
};

class Api final : public ShimApi {
 public:
  ShimProcessor* Load(const std::string& path, std::string* error) override {
    auto* result = new Processor();
    sentencepiece::util::Status status = result->processor.Load(path);
    if (!status.ok()) {
      *error = status.ToString();
      delete result;
      return nullptr;
    }
    return result;
  }
  bool Train(const std::string& arguments, std::string* error) override {
    sentencepiece::util::Status status = sentencepiece::SentencePieceTrainer::Train(arguments);
    if (!status.ok()) *error = status.ToString();
    return status.ok();
  }
};

}  // namespace
}  // namespace deltaserve::model::sentencepiece_bridge

extern "C" __attribute__((visibility("default")))
deltaserve::model::sentencepiece_bridge::ShimApi* deltaserve_sentencepiece_shim_api() {
  static auto* api = new deltaserve::model::sentencepiece_bridge::Api();
  return api;
}
