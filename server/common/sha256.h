// Sha256: the SHA-256 digest (FIPS 180-4), incrementally or of a whole file, as lower-case hex.
// Used to record artifact checksums in the catalog (no crypto library is among the project's
// dependencies). Not thread-safe per object.
//   Sha256 hash; hash.Update(data); std::string hex = hash.HexDigest();
//   ASSIGN_OR_RETURN(std::string digest, Sha256OfFile(path));
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace deltaserve::common {

class Sha256 {
 public:
  Sha256();
  void Update(std::string_view data);
  // HexDigest finishes the hash; the object must not be updated afterwards.
  std::string HexDigest();

 private:
  void Block(const uint8_t* block);
  uint32_t state_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t length_ = 0;  // bytes
};

std::string Sha256Hex(std::string_view data);
absl::StatusOr<std::string> Sha256OfFile(const std::string& path);

}  // namespace deltaserve::common
