// Built on its own as libpdserve_sentencepiece.so (never part of
// pdserve_shared) and loaded by sentencepiece_model.cc with
// dlopen(RTLD_LOCAL | RTLD_DEEPBIND).
//
// Why a module: Debian's libsentencepiece.so exports its bundled copy of
// protobuf-lite 3.14 under the same symbol names as libprotobuf 3.21, which
// every gRPC process loads. In one global symbol scope one copy ends up
// running the other's code: sentencepiece_model.pb.cc aborts with "compiled
// against version 3.14.0 of the Protocol Buffer runtime ... installed version
// 3.21.12", or, in the other link order, libprotobuf's initialisers crash.
// Loaded with deep binding, libsentencepiece resolves protobuf symbols to its
// own copy first, and RTLD_LOCAL keeps that copy out of the global scope.
//
// The functions below are the module's whole interface: the calls of
// SentencePieceProcessor that return util::Status (whose methods are not
// virtual, so they must run here). Every other method the wrapper uses is
// virtual and dispatches into this library through the object's vtable.
#include <sentencepiece_processor.h>

#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece::logging {
// Exported by libsentencepiece.so but absent from its public header.
void SetMinLogLevel(int level);
}  // namespace sentencepiece::logging

extern "C" {

// A new processor; the caller deletes it (the destructor is virtual).
__attribute__((visibility("default"))) sentencepiece::SentencePieceProcessor*
PdserveNewSentencePieceProcessor() {
  // Errors reach the caller as statuses; keep sentencepiece's own logging
  // (std::cerr, which deep binding may resolve to an unconstructed copy when
  // the executable has a copy relocation for it) for fatal errors only.
  sentencepiece::logging::SetMinLogLevel(3);
  return new sentencepiece::SentencePieceProcessor();
}

__attribute__((visibility("default"))) bool PdserveSentencePieceLoad(
    sentencepiece::SentencePieceProcessor* processor, const std::string& path, std::string* error) {
  const sentencepiece::util::Status status = processor->Load(path);
  if (!status.ok() && error != nullptr) *error = status.ToString();
  return status.ok();
}

__attribute__((visibility("default"))) bool PdserveSentencePieceEncode(
    const sentencepiece::SentencePieceProcessor* processor, std::string_view text,
    std::vector<int>* ids) {
  return processor->Encode(text, ids).ok();
}

__attribute__((visibility("default"))) bool PdserveSentencePieceDecode(
    const sentencepiece::SentencePieceProcessor* processor, const std::vector<int>& ids,
    std::string* text) {
  return processor->Decode(ids, text).ok();
}

}  // extern "C"
