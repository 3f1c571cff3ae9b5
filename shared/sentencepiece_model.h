// A thin wrapper over sentencepiece::SentencePieceProcessor that exposes only
// standard types. sentencepiece_processor.h declares
// `namespace absl { using std::string_view; }`, which collides with Debian's
// Abseil, so it is included only by sentencepiece_model.cc (which includes no
// Abseil header) and every other file goes through this class.
#ifndef PDSERVE_SHARED_SENTENCEPIECE_MODEL_H_
#define PDSERVE_SHARED_SENTENCEPIECE_MODEL_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}  // namespace sentencepiece

namespace pdserve {

class SentencePieceModel {
 public:
  SentencePieceModel();
  ~SentencePieceModel();
  SentencePieceModel(const SentencePieceModel&) = delete;
  SentencePieceModel& operator=(const SentencePieceModel&) = delete;

  // Loads a serialized ModelProto (`tokenizer.model`). Returns false and sets
  // `*error` to sentencepiece's message when the file is missing or invalid.
  bool Load(const std::string& path, std::string* error);

  // SentencePiece ids of `text` (normalized as the model says; no BOS/EOS).
  // Empty for empty text or a model that is not loaded.
  std::vector<int> Encode(std::string_view text) const;

  // Text of `ids`: pieces concatenated, "▁" turned into spaces, the leading
  // space of the first piece dropped, byte-fallback pieces joined into
  // UTF-8 (an invalid byte sequence becomes U+FFFD), control pieces (BOS,
  // EOS) rendered as nothing. Every id must be in [0, PieceSize()).
  std::string Decode(const std::vector<int>& ids) const;

  // The piece for `id` ("▁Paris", "<0x0A>", "<s>"); "" out of range.
  std::string IdToPiece(int id) const;
  // The id of `piece`, or unk_id() when it is not in the vocabulary.
  int PieceToId(std::string_view piece) const;
  int PieceSize() const;

  int bos_id() const;  // -1 when the model has none
  int eos_id() const;
  int unk_id() const;

  // Piece types (false out of range).
  bool IsByte(int id) const;     // <0x00>..<0xFF> byte-fallback piece
  bool IsControl(int id) const;  // <s>, </s> and other control pieces
  bool IsUnknown(int id) const;  // <unk>

 private:
  bool InRange(int id) const { return id >= 0 && id < PieceSize(); }
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
};

}  // namespace pdserve

#endif  // PDSERVE_SHARED_SENTENCEPIECE_MODEL_H_
