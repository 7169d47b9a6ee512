// ReadWholeFile: what deltactl reads from files it is given (TLS PEMs, merge recipes, datasets):
// the whole contents, from a regular file or a pipe (`--tls-ca <(...)` works). False when the
// path cannot be opened; the caller says which file it was.
//   std::string pem;
//   if (!ReadWholeFile(path, &pem)) { /* "deltactl: cannot read PATH" */ }
#pragma once

#include <fstream>
#include <sstream>
#include <string>

namespace deltaserve::client {

inline bool ReadWholeFile(const std::string& path, std::string* contents) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return false;
  std::stringstream bytes;
  bytes << file.rdbuf();
  *contents = bytes.str();
  return true;
}

}  // namespace deltaserve::client
