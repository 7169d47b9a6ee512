// Small file-system helpers returning absl::Status instead of throwing.
// ReadFileToString reads a whole (bounded) file; MappedFile memory-maps a file read-only and
// unmaps it on destruction (movable, not copyable; the mapping is immutable so sharing the
// pointer across threads is safe). WriteFileAtomically writes to a temp file, fsyncs and renames.
#pragma once

#include <vector>

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace deltaserve::common {

// ReadFileToString returns the file's bytes; fails when larger than max_bytes.
absl::StatusOr<std::string> ReadFileToString(const std::string& path,
                                             size_t max_bytes = 256u << 20);

// WriteFileAtomically writes data to path via path.tmp + fsync + rename.
absl::Status WriteFileAtomically(const std::string& path, const std::string& data);

bool PathExists(const std::string& path);
bool IsDirectory(const std::string& path);
// Subdirectories lists the names of the directories directly inside `directory`, sorted.
std::vector<std::string> Subdirectories(const std::string& directory);

// MakeDirectories creates `path` and its missing parents (mode 0750); OK when it exists.
absl::Status MakeDirectories(const std::string& path);
// MakeTempDirectory creates a fresh directory `parent`/`prefix`XXXXXX and returns its path.
absl::StatusOr<std::string> MakeTempDirectory(const std::string& parent, const std::string& prefix);
// RemoveRecursively deletes a file or a directory tree (symlinks are removed, not followed);
// OK when nothing is there.
absl::Status RemoveRecursively(const std::string& path);
// SyncPath fsyncs a file or directory (directories: so that renames inside them are durable).
absl::Status SyncPath(const std::string& path);
// RenameDirectory moves `from` to `to` atomically; ALREADY_EXISTS when `to` exists.
absl::Status RenameDirectory(const std::string& from, const std::string& to);

// JoinPath("a", "b") == "a/b".
std::string JoinPath(const std::string& directory, const std::string& name);

class MappedFile {
 public:
  static absl::StatusOr<MappedFile> Open(const std::string& path);
  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // ReadIn brings the pages of [data, data + size) (inside the mapping) into memory now, so
  // that later reads do not fault to disk. ReleasePages gives the whole pages inside that range
  // back to the kernel (a later read faults them in again from the file). Both are hints.
  static void ReadIn(const uint8_t* data, size_t size);
  static void ReleasePages(const uint8_t* data, size_t size);

 private:
  void Reset();
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

}  // namespace deltaserve::common
