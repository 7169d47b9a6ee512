// deltactl's "variants" commands over the Variants service:
//   deltactl variants list [--prefix P]        every variant (all pages), one line each
//   deltactl variants get NAME                 one variant in detail
//   deltactl variants register NAME PATH       a directory under the server's --adapter-root
//   deltactl variants upload NAME DIR          streams a local PEFT adapter directory
//   deltactl variants delete NAME [--drain]    refused while in use unless --drain
//   deltactl variants pin|unpin NAME
// Returns the process exit code (0 ok, 1 server error, 2 usage).
#pragma once

#include <string>
#include <vector>

#include "client/deltaserve_client.h"

namespace deltaserve::client {

int RunVariantsCommand(DeltaserveClient& client, const std::vector<std::string>& arguments);

}  // namespace deltaserve::client
