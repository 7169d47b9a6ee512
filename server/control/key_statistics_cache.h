// KeyStatisticsCache: the key statistics of knowledge edits (C = E[k k^T] of one layer's MLP
// down-projection inputs over a body of text, ops/edit/key_statistics.h) kept in the data dir,
// one file per (base model, dataset, layer):
//   DATA_DIR/stats/<model fingerprint>/<dataset sha256>/layer-<L>.safetensors
// Statistics are always of the base model (whatever variant an edit stacks on), so every edit
// job and tenant on the same base shares them. Ensure loads the layers already there and
// collects the missing ones in one pass over the texts (each text alone, at most 256 tokens; a
// chunk of texts at a time, calling `step` between chunks so a job can report progress and be
// cancelled), then writes each atomically (temp file, fsync, rename): a file is whole or absent.
// A file that does not read back as statistics is collected again. Thread-safe (concurrent
// jobs may both collect a layer; the last rename wins with the same content).
//   KeyStatisticsCache cache(data_dir + "/stats", fingerprint);
//   ASSIGN_OR_RETURN(KeyStatistics stats, cache.Ensure(model, tokenizer, {2, 3}, source, step));
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "server/model/llama_model.h"
#include "server/model/tokenizer.h"

namespace deltaserve::control {

// The texts statistics are collected over, and the digest that names them in the cache.
struct StatisticsSource {
  std::vector<std::string> texts;
  std::string sha256;
};

struct KeyStatistics {
  std::map<int64_t, at::Tensor> covariances;  // layer -> C (float64 [intermediate, intermediate])
  std::map<int64_t, int64_t> keys;            // layer -> how many keys C averages
  std::vector<int64_t> reused;                // layers read from the cache
  std::vector<int64_t> computed;              // layers collected now
};

class KeyStatisticsCache {
 public:
  KeyStatisticsCache(std::string directory, std::string model_fingerprint)
      : directory_(std::move(directory)), model_fingerprint_(std::move(model_fingerprint)) {}

  // `step(texts_done, texts_total)` is called between chunks; its error (e.g. CANCELLED) stops
  // the collection and is returned, leaving only whole files.
  absl::StatusOr<KeyStatistics> Ensure(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                                       const std::vector<int64_t>& layers, const StatisticsSource& source,
                                       const std::function<absl::Status(int64_t, int64_t)>& step) const;
  // Cached: whether a layer's file exists for `source` (it may still fail to read).
  bool Cached(int64_t layer, const std::string& source_sha256) const;

 private:
  std::string Path(int64_t layer, const std::string& source_sha256) const;

  const std::string directory_;
  const std::string model_fingerprint_;
};

}  // namespace deltaserve::control
