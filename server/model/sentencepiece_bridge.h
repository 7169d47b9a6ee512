// sentencepiece_bridge: deltaserve's access to libsentencepiece, through the shim module
// described in sentencepiece_shim_api.h. The shim is found at $DELTASERVE_SENTENCEPIECE_SHIM,
// else next to the running executable (or its ../lib), else at the path the build recorded.
// Processor is thread-safe for const use after Load.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace deltaserve::model::sentencepiece_bridge {

class ShimProcessor;

class Processor {
 public:
  // Load returns nullptr and sets *error on failure.
  static std::unique_ptr<Processor> Load(const std::string& path, std::string* error);
  ~Processor();

  bool Encode(const std::string& text, std::vector<int>* ids, std::string* error) const;
  int PieceSize() const;
  std::string IdToPiece(int id) const;
  bool IsControl(int id) const;
  bool IsUnknown(int id) const;
  bool IsUnused(int id) const;
  bool IsByte(int id) const;
  int BosId() const;
  int EosId() const;

 private:
  explicit Processor(ShimProcessor* impl);
  std::unique_ptr<ShimProcessor> impl_;
};

// Train runs SentencePieceTrainer with a "--flag=value ..." argument string.
bool Train(const std::string& arguments, std::string* error);

}  // namespace deltaserve::model::sentencepiece_bridge
