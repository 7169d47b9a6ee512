// Fuzzes the server configuration parser (protobuf text format plus deltaserve's own checks):
// any text is either refused with INVALID_ARGUMENT or gives a config whose tenants passed
// validation; never a crash.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "server/auth/server_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = deltaserve::auth::ParseServerConfig(text, "fuzz.textproto");
  if (!config.ok()) {
    if (config.status().code() != absl::StatusCode::kInvalidArgument) std::abort();
    return 0;
  }
  for (const auto& tenant : config->tenants()) {
    if (tenant.name().empty()) std::abort();
    for (const std::string& digest : tenant.api_key_sha256()) {
      if (digest.size() != 64) std::abort();
    }
  }
  return 0;
}
