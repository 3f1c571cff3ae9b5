// The only file besides sentencepiece_module.cc that includes
// sentencepiece_processor.h; it must include no Abseil header (see
// sentencepiece_model.h). It links no sentencepiece code: the processor comes
// from libpdserve_sentencepiece.so, loaded with deep binding (see
// sentencepiece_module.cc for why), and is used through its virtual methods
// plus the module's four functions.
#include "shared/sentencepiece_model.h"

#include <dlfcn.h>
#include <unistd.h>

#include <sentencepiece_processor.h>

#include <cstdlib>

namespace pdserve {
namespace {

constexpr char kModuleName[] = "libpdserve_sentencepiece.so";

struct SentencePieceModule {
  sentencepiece::SentencePieceProcessor* (*create)() = nullptr;
  bool (*load)(sentencepiece::SentencePieceProcessor*, const std::string&, std::string*) = nullptr;
  bool (*encode)(const sentencepiece::SentencePieceProcessor*, std::string_view,
                 std::vector<int>*) = nullptr;
  bool (*decode)(const sentencepiece::SentencePieceProcessor*, const std::vector<int>&,
                 std::string*) = nullptr;
  std::string error;  // why the module is unusable; empty when it loaded
};

// Where to look, in order: $PDSERVE_SENTENCEPIECE_MODULE; beside the
// executable (installed layouts); the build tree; the loader's search path.
std::vector<std::string> ModuleCandidates() {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("PDSERVE_SENTENCEPIECE_MODULE"); env != nullptr && *env) {
    candidates.emplace_back(env);
  }
  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) {
    std::string path(exe, static_cast<size_t>(n));
    candidates.push_back(path.substr(0, path.rfind('/') + 1) + kModuleName);
  }
#ifdef PDSERVE_SENTENCEPIECE_MODULE_PATH
  candidates.emplace_back(PDSERVE_SENTENCEPIECE_MODULE_PATH);
#endif
  candidates.emplace_back(kModuleName);
  return candidates;
}

SentencePieceModule* LoadModule() {
  auto* module = new SentencePieceModule();
  void* handle = nullptr;
  std::string tried;
  for (const std::string& candidate : ModuleCandidates()) {
    handle = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (handle != nullptr) break;
    const char* why = dlerror();
    tried += "\n  " + candidate + ": " + (why != nullptr ? why : "not loadable");
  }
  if (handle == nullptr) {
    module->error = std::string("cannot load the SentencePiece module ") + kModuleName +
                    " (set PDSERVE_SENTENCEPIECE_MODULE to its path); tried:" + tried;
    return module;
  }
  module->create = reinterpret_cast<decltype(module->create)>(
      dlsym(handle, "PdserveNewSentencePieceProcessor"));
  module->load = reinterpret_cast<decltype(module->load)>(dlsym(handle, "PdserveSentencePieceLoad"));
  module->encode =
      reinterpret_cast<decltype(module->encode)>(dlsym(handle, "PdserveSentencePieceEncode"));
  module->decode =
      reinterpret_cast<decltype(module->decode)>(dlsym(handle, "PdserveSentencePieceDecode"));
  if (!module->create || !module->load || !module->encode || !module->decode) {
    module->error = std::string(kModuleName) + " lacks the Pdserve* entry points";
    module->create = nullptr;
  }
  return module;
}

// Loaded once and kept for the life of the process (processors created from
// it may live as long), so it is never unloaded.
const SentencePieceModule& Module() {
  static const SentencePieceModule* const module = LoadModule();
  return *module;
}

}  // namespace

SentencePieceModel::SentencePieceModel() {
  if (Module().create != nullptr) processor_.reset(Module().create());
}

SentencePieceModel::~SentencePieceModel() = default;

bool SentencePieceModel::Load(const std::string& path, std::string* error) {
  std::string why;
  if (processor_ == nullptr) {
    why = Module().error;
  } else if (Module().load(processor_.get(), path, &why)) {
    return true;
  }
  if (error != nullptr) *error = why;
  return false;
}

std::vector<int> SentencePieceModel::Encode(std::string_view text) const {
  std::vector<int> ids;
  if (text.empty() || processor_ == nullptr) return ids;
  // Fails only when no model is loaded; then there are no ids to give.
  if (!Module().encode(processor_.get(), text, &ids)) ids.clear();
  return ids;
}

std::string SentencePieceModel::Decode(const std::vector<int>& ids) const {
  std::string text;
  if (ids.empty() || processor_ == nullptr) return text;
  if (!Module().decode(processor_.get(), ids, &text)) text.clear();
  return text;
}

std::string SentencePieceModel::IdToPiece(int id) const {
  return InRange(id) ? processor_->IdToPiece(id) : std::string();
}

int SentencePieceModel::PieceToId(std::string_view piece) const {
  return processor_ != nullptr ? processor_->PieceToId(piece) : -1;
}

int SentencePieceModel::PieceSize() const {
  return processor_ != nullptr ? processor_->GetPieceSize() : 0;
}

int SentencePieceModel::bos_id() const { return processor_ != nullptr ? processor_->bos_id() : -1; }

int SentencePieceModel::eos_id() const { return processor_ != nullptr ? processor_->eos_id() : -1; }

int SentencePieceModel::unk_id() const { return processor_ != nullptr ? processor_->unk_id() : -1; }

bool SentencePieceModel::IsByte(int id) const { return InRange(id) && processor_->IsByte(id); }

bool SentencePieceModel::IsControl(int id) const {
  return InRange(id) && processor_->IsControl(id);
}

bool SentencePieceModel::IsUnknown(int id) const {
  return InRange(id) && processor_->IsUnknown(id);
}

}  // namespace pdserve
