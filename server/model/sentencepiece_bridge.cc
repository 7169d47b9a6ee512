#include "server/model/sentencepiece_bridge.h"

#include <dlfcn.h>
#include <limits.h>
#include <unistd.h>

#include <mutex>

#include "server/model/sentencepiece_shim_api.h"

namespace deltaserve::model::sentencepiece_bridge {
namespace {

constexpr char kShimName[] = "libdeltaserve_sentencepiece.so";

std::string ExecutableDirectory() {
  char buffer[PATH_MAX];
  ssize_t length = ::readlink("/proc/self/exe", buffer, sizeof(buffer) - 1);
  if (length <= 0) return "";
  std::string path(buffer, static_cast<size_t>(length));
  return path.substr(0, path.rfind('/'));
}

ShimApi* LoadShim(std::string* error) {
  static std::once_flag once;
  static ShimApi* api = nullptr;
  static std::string load_error;
  std::call_once(once, [] {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("DELTASERVE_SENTENCEPIECE_SHIM")) candidates.push_back(env);
    std::string directory = ExecutableDirectory();
    if (!directory.empty()) {
      candidates.push_back(directory + "/" + kShimName);
      candidates.push_back(directory + "/../lib/" + kShimName);
      candidates.push_back(directory + "/../lib/deltaserve/" + kShimName);
    }
#ifdef DELTASERVE_SENTENCEPIECE_SHIM_PATH
    candidates.push_back(DELTASERVE_SENTENCEPIECE_SHIM_PATH);
#endif
    for (const std::string& candidate : candidates) {
      void* handle = ::dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (handle == nullptr) {
        load_error += std::string(" ") + ::dlerror() + ";";
        continue;
      }
      auto* entry = reinterpret_cast<ShimApi* (*)()>(
          ::dlsym(handle, "deltaserve_sentencepiece_shim_api"));
      if (entry != nullptr) {
        api = entry();
        return;
      }
      load_error += " " + candidate + " has no deltaserve_sentencepiece_shim_api;";
    }
  });
  if (api == nullptr) *error = "cannot load the SentencePiece shim " + std::string(kShimName) + ":" + load_error;
  return api;
}

}  // namespace

Processor::Processor(ShimProcessor* impl) : impl_(impl) {}
Processor::~Processor() = default;

std::unique_ptr<Processor> Processor::Load(const std::string& path, std::string* error) {
  ShimApi* api = LoadShim(error);
  if (api == nullptr) return nullptr;
  ShimProcessor* impl = api->Load(path, error);
  if (impl == nullptr) return nullptr;
  return std::unique_ptr<Processor>(new Processor(impl));
}

bool Processor::Encode(const std::string& text, std::vector<int>* ids, std::string* error) const {
  return impl_->Encode(text, ids, error);
}
int Processor::PieceSize() const { return impl_->PieceSize(); }
std::string Processor::IdToPiece(int id) const { return impl_->IdToPiece(id); }
bool Processor::IsControl(int id) const { return impl_->IsControl(id); }
bool Processor::IsUnknown(int id) const { return impl_->IsUnknown(id); }
bool Processor::IsUnused(int id) const { return impl_->IsUnused(id); }
bool Processor::IsByte(int id) const { return impl_->IsByte(id); }
int Processor::BosId() const { return impl_->BosId(); }
int Processor::EosId() const { return impl_->EosId(); }

bool Train(const std::string& arguments, std::string* error) {
  ShimApi* api = LoadShim(error);
  return api != nullptr && api->Train(arguments, error);
}

}  // namespace deltaserve::model::sentencepiece_bridge
