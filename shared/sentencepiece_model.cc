// The only file that includes sentencepiece_processor.h; it must include no
// Abseil header (see sentencepiece_model.h).
#include "shared/sentencepiece_model.h"

#include <sentencepiece_processor.h>

namespace pdserve {

SentencePieceModel::SentencePieceModel()
    : processor_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}

SentencePieceModel::~SentencePieceModel() = default;

bool SentencePieceModel::Load(const std::string& path, std::string* error) {
  const sentencepiece::util::Status status = processor_->Load(path);
  if (status.ok()) return true;
  if (error != nullptr) *error = status.ToString();
  return false;
}

std::vector<int> SentencePieceModel::Encode(std::string_view text) const {
  std::vector<int> ids;
  if (text.empty()) return ids;
  // Fails only when no model is loaded; then there are no ids to give.
  if (!processor_->Encode(text, &ids).ok()) ids.clear();
  return ids;
}

std::string SentencePieceModel::Decode(const std::vector<int>& ids) const {
  std::string text;
  if (ids.empty()) return text;
  if (!processor_->Decode(ids, &text).ok()) text.clear();
  return text;
}

std::string SentencePieceModel::IdToPiece(int id) const {
  return InRange(id) ? processor_->IdToPiece(id) : std::string();
}

int SentencePieceModel::PieceToId(std::string_view piece) const {
  return processor_->PieceToId(piece);
}

int SentencePieceModel::PieceSize() const { return processor_->GetPieceSize(); }

int SentencePieceModel::bos_id() const { return processor_->bos_id(); }

int SentencePieceModel::eos_id() const { return processor_->eos_id(); }

int SentencePieceModel::unk_id() const { return processor_->unk_id(); }

bool SentencePieceModel::IsByte(int id) const { return InRange(id) && processor_->IsByte(id); }

bool SentencePieceModel::IsControl(int id) const {
  return InRange(id) && processor_->IsControl(id);
}

bool SentencePieceModel::IsUnknown(int id) const {
  return InRange(id) && processor_->IsUnknown(id);
}

}  // namespace pdserve
