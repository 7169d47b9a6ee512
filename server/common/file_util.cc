#include "server/common/file_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace deltaserve::common {
namespace {

absl::Status ErrnoStatus(const std::string& what, const std::string& path) {
  int error = errno;
  std::string message = absl::StrCat(what, " ", path, ": ", std::strerror(error));
  if (error == ENOENT) return absl::NotFoundError(message);
  if (error == EACCES || error == EPERM) return absl::PermissionDeniedError(message);
  return absl::InternalError(message);
}

// OpenForReading opens `path` read-only and stats it; the caller closes the descriptor.
absl::StatusOr<int> OpenForReading(const std::string& path, struct stat* info) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("cannot open", path);
  if (::fstat(fd, info) != 0) {
    absl::Status status = ErrnoStatus("cannot stat", path);
    ::close(fd);
    return status;
  }
  return fd;
}

}  // namespace

absl::StatusOr<std::string> ReadFileToString(const std::string& path, size_t max_bytes) {
  struct stat info;
  absl::StatusOr<int> opened = OpenForReading(path, &info);
  if (!opened.ok()) return opened.status();
  const int fd = *opened;
  if (S_ISDIR(info.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is a directory, expected a file"));
  }
  if (static_cast<size_t>(info.st_size) > max_bytes) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is ", info.st_size, " bytes, more than the limit of ", max_bytes));
  }
  std::string data(static_cast<size_t>(info.st_size), '\0');
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::read(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      absl::Status status = ErrnoStatus("cannot read", path);
      ::close(fd);
      return status;
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return data;
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& data) {
  std::string temp = path + ".tmp";
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("cannot create", temp);
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      absl::Status status = ErrnoStatus("cannot write", temp);
      ::close(fd);
      return status;
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    absl::Status status = ErrnoStatus("cannot fsync", temp);
    ::close(fd);
    return status;
  }
  ::close(fd);
  if (::rename(temp.c_str(), path.c_str()) != 0) return ErrnoStatus("cannot rename to", path);
  return absl::OkStatus();
}

bool PathExists(const std::string& path) {
  struct stat info;
  return ::stat(path.c_str(), &info) == 0;
}

std::string JoinPath(const std::string& directory, const std::string& name) {
  if (directory.empty()) return name;
  if (directory.back() == '/') return directory + name;
  return directory + "/" + name;
}

absl::StatusOr<MappedFile> MappedFile::Open(const std::string& path) {
  struct stat info;
  absl::StatusOr<int> opened = OpenForReading(path, &info);
  if (!opened.ok()) return opened.status();
  const int fd = *opened;
  MappedFile file;
  file.path_ = path;
  file.size_ = static_cast<size_t>(info.st_size);
  if (file.size_ > 0) {
    void* address = ::mmap(nullptr, file.size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (address == MAP_FAILED) {
      absl::Status status = ErrnoStatus("cannot mmap", path);
      ::close(fd);
      return status;
    }
    file.data_ = static_cast<const uint8_t*>(address);
  }
  ::close(fd);
  return file;
}

namespace {

size_t PageSize() {
  static const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

}  // namespace

void MappedFile::ReadIn(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const size_t page = PageSize();
  const uintptr_t first = reinterpret_cast<uintptr_t>(data) / page * page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(data) + size;
  ::madvise(reinterpret_cast<void*>(first), end - first, MADV_WILLNEED);
  // One read per page faults it in; `volatile` keeps the reads.
  for (uintptr_t address = first; address < end; address += page) {
    (void)*reinterpret_cast<const volatile uint8_t*>(std::max(address, reinterpret_cast<uintptr_t>(data)));
  }
}

void MappedFile::ReleasePages(const uint8_t* data, size_t size) {
  const size_t page = PageSize();
  const uintptr_t first = (reinterpret_cast<uintptr_t>(data) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + size) / page * page;
  if (end > first) ::madvise(reinterpret_cast<void*>(first), end - first, MADV_DONTNEED);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      path_(std::move(other.path_)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    Reset();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    path_ = std::move(other.path_);
  }
  return *this;
}

MappedFile::~MappedFile() { Reset(); }

void MappedFile::Reset() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

bool IsDirectory(const std::string& path) {
  struct stat info;
  return ::stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

std::vector<std::string> Subdirectories(const std::string& directory) {
  std::vector<std::string> names;
  DIR* handle = ::opendir(directory.c_str());
  if (handle == nullptr) return names;
  while (dirent* entry = ::readdir(handle)) {
    std::string name = entry->d_name;
    if (name == "." || name == "..") continue;
    if (IsDirectory(JoinPath(directory, name))) names.push_back(name);
  }
  ::closedir(handle);
  std::sort(names.begin(), names.end());
  return names;
}

absl::Status MakeDirectories(const std::string& path) {
  if (path.empty() || IsDirectory(path)) return absl::OkStatus();
  size_t slash = path.find_last_of('/');
  if (slash != std::string::npos && slash > 0) {
    absl::Status parent = MakeDirectories(path.substr(0, slash));
    if (!parent.ok()) return parent;
  }
  if (::mkdir(path.c_str(), 0750) != 0 && errno != EEXIST) return ErrnoStatus("cannot create", path);
  return absl::OkStatus();
}

absl::StatusOr<std::string> MakeTempDirectory(const std::string& parent, const std::string& prefix) {
  std::string pattern = JoinPath(parent, prefix + "XXXXXX");
  if (::mkdtemp(pattern.data()) == nullptr) return ErrnoStatus("cannot create a directory in", parent);
  return pattern;
}

absl::Status RemoveRecursively(const std::string& path) {
  struct stat info;
  if (::lstat(path.c_str(), &info) != 0) {
    return errno == ENOENT ? absl::OkStatus() : ErrnoStatus("cannot stat", path);
  }
  if (S_ISDIR(info.st_mode)) {
    DIR* handle = ::opendir(path.c_str());
    if (handle == nullptr) return ErrnoStatus("cannot open", path);
    std::vector<std::string> names;
    while (dirent* entry = ::readdir(handle)) {
      std::string name = entry->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(handle);
    for (const std::string& name : names) {
      absl::Status removed = RemoveRecursively(JoinPath(path, name));
      if (!removed.ok()) return removed;
    }
    if (::rmdir(path.c_str()) != 0) return ErrnoStatus("cannot remove", path);
    return absl::OkStatus();
  }
  if (::unlink(path.c_str()) != 0) return ErrnoStatus("cannot remove", path);
  return absl::OkStatus();
}

absl::Status SyncPath(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("cannot open", path);
  int result = ::fsync(fd);
  absl::Status status = result == 0 ? absl::OkStatus() : ErrnoStatus("cannot fsync", path);
  ::close(fd);
  return status;
}

absl::Status RenameDirectory(const std::string& from, const std::string& to) {
  if (PathExists(to)) return absl::AlreadyExistsError(absl::StrCat(to, " already exists"));
  if (::rename(from.c_str(), to.c_str()) != 0) {
    if (errno == EEXIST || errno == ENOTEMPTY) {
      return absl::AlreadyExistsError(absl::StrCat(to, " already exists"));
    }
    return ErrnoStatus(absl::StrCat("cannot rename ", from, " to"), to);
  }
  return absl::OkStatus();
}

}  // namespace deltaserve::common
