// The virtual interface between deltaserve and the SentencePiece shim module.
//
// Why a shim: Debian's libsentencepiece embeds protobuf 3.14 and exports those symbols, while
// libtorch and gRPC need the system libprotobuf 3.21; in one symbol namespace each binds to the
// other's copies and the process aborts at start-up. The shim module (sentencepiece_shim.cc)
// links libsentencepiece and is loaded with dlopen(RTLD_LOCAL | RTLD_DEEPBIND), so it binds to
// its own protobuf and nothing else sees it. Only virtual calls cross the boundary.
//
// Caveat of DEEPBIND: the shim binds libstdc++'s own std::cerr, so a process whose executable
// copy-relocates std::cerr (any that names it directly, e.g. through gtest) must not run code
// that makes SentencePiece log — the trainer does. deltaserve's binaries use no iostreams;
// tests write demo models through the deltaserve-make-demo binary.
// std-only on purpose (see sentencepiece_bridge.h).
#pragma once

#include <string>
#include <vector>

namespace deltaserve::model::sentencepiece_bridge {

class ShimProcessor {
 public:
  virtual ~ShimProcessor() = default;
  virtual bool Encode(const std::string& text, std::vector<int>* ids, std::string* error) const = 0;
  virtual int PieceSize() const = 0;
  virtual std::string IdToPiece(int id) const = 0;
  virtual bool IsControl(int id) const = 0;
  virtual bool IsUnknown(int id) const = 0;
  virtual bool IsUnused(int id) const = 0;
  virtual bool IsByte(int id) const = 0;
  virtual int BosId() const = 0;
  virtual int EosId() const = 0;
};

class ShimApi {
 public:
  virtual ~ShimApi() = default;
  // Load returns nullptr and sets *error on failure; the caller owns the result.
  virtual ShimProcessor* Load(const std::string& path, std::string* error) = 0;
  virtual bool Train(const std::string& arguments, std::string* error) = 0;
};

}  // namespace deltaserve::model::sentencepiece_bridge

// The one symbol the shim exports; returns a process-lifetime singleton.
extern "C" deltaserve::model::sentencepiece_bridge::ShimApi* deltaserve_sentencepiece_shim_api();
