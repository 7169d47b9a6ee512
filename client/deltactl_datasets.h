// deltactl's "datasets" commands over the Datasets service:
//   deltactl datasets upload NAME FILE     streams a JSONL file ({"text": ...} or
//                                          {"prompt": ..., "completion": ...} per line)
//   deltactl datasets list [--prefix P]    all pages, in name order
//   deltactl datasets get NAME
//   deltactl datasets delete NAME
// Returns the process exit code (0 ok, 1 server error, 2 usage or an unreadable file).
#pragma once

#include <string>
#include <vector>

#include "client/deltaserve_client.h"

namespace deltaserve::client {

int RunDatasetsCommand(DeltaserveClient& client, const std::vector<std::string>& arguments);

}  // namespace deltaserve::client
