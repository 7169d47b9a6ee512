// ModelFingerprint: a short identity of the base model in a Hugging Face directory, for caches
// of what the model computes (the key statistics of knowledge edits) that must not be reused
// for another model under the same name. It hashes (SHA-256) config.json and, for every
// *.safetensors file in name order, its name, size, and its first and last MiB (the header and
// the first and last weights), so it costs two reads per file whatever the model's size. Two
// checkpoints differing only in weights in the middle of a file would collide; fine-tunes and
// differently seeded models do not.
//   ASSIGN_OR_RETURN(std::string fingerprint, ModelFingerprint(model_dir));   // 16 hex digits
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace deltaserve::model {

// ModelFingerprint: NOT_FOUND without config.json; the read's error otherwise.
absl::StatusOr<std::string> ModelFingerprint(const std::string& model_dir);

}  // namespace deltaserve::model
