// Text <-> token ids: SentencePiece plus the checkpoint's added special tokens.
#ifndef PDSERVE_SHARED_TOKENIZER_H_
#define PDSERVE_SHARED_TOKENIZER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace pdserve {

class SentencePieceModel;  // sentencepiece_model.h: the only file that sees sentencepiece

class Tokenizer {
 public:
  // Loads `model_dir`/tokenizer.model and the added tokens from
  // added_tokens.json ({"<|user|>": 32010, ...}) or, failing that, the
  // "added_tokens" list of tokenizer.json. Each added token's "lstrip" and
  // "rstrip" flags come from tokenizer.json's "added_tokens" or, for a token
  // it does not list, tokenizer_config.json's "added_tokens_decoder" (the
  // order Hugging Face's fast tokenizer gives them); absent, both are false.
  // Errors: NOT_FOUND for a missing tokenizer.model; INVALID_ARGUMENT for a
  // file sentencepiece rejects, bad JSON or a flag that is not a boolean
  // (naming the file).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& model_dir);
  ~Tokenizer();

  // Splits `text` on the added special tokens (exact match, leftmost then
  // longest), encodes the pieces between them with SentencePiece, and
  // prepends BOS when `add_bos`. A token with rstrip (lstrip) takes the
  // whitespace after (before) it along, whitespace being Unicode's
  // White_Space property as in Hugging Face's tokenizers: Phi-3's
  // "<|user|>\nHi" is <|user|> ▁Hi. Matches Hugging Face's LlamaTokenizer
  // (legacy) on the cases in tests/data/tokenizers/llama2/cases.json and
  // Phi-3-mini's tokenizer on tests/data/golden/phi3_chat_ids.json.
  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const;

  // Concatenated text of `ids` as SentencePiece decodes it (byte-fallback
  // pieces joined into UTF-8, the leading space of the first piece dropped);
  // special tokens render as their text; BOS/EOS render as nothing.
  // Decode(Encode(text)) is `text` less the whitespace that lstrip/rstrip
  // tokens took.
  std::string Decode(std::span<const int32_t> ids) const;

  // The piece for `id` ("▁Paris", "<0x0A>", "<|user|>"); "" out of range.
  std::string IdToPiece(int32_t id) const;

  int32_t bos_id() const;
  int32_t eos_id() const;
  // Highest id + 1 over the SentencePiece vocabulary and the added tokens.
  int vocab_size() const;
  bool IsAddedToken(int32_t id) const { return added_by_id_.count(id) > 0; }

 private:
  Tokenizer() = default;
  // Hugging Face AddedToken flags: take the whitespace before/after along.
  struct Strip {
    bool lstrip = false;
    bool rstrip = false;
  };

  std::unique_ptr<SentencePieceModel> sp_;
  std::map<std::string, int32_t> added_by_text_;
  std::map<int32_t, std::string> added_by_id_;
  std::map<std::string, Strip> strip_by_text_;  // tokens with a flag set only
};

// Streams text for a growing list of ids, emitting only complete UTF-8 and
// getting SentencePiece's leading spaces right: each Push returns the text
// the new id adds. `context` (usually the prompt's last few ids) is the text
// the generated ids continue, so a first generated piece "▁there" yields
// " there". Concatenating every Push and the final Flush gives exactly
// Decode(context + generated) with Decode(context) removed from its front.
// Works like Hugging Face TGI's decode_token: it decodes a short window of
// ids before and after the new one and returns the difference, holding back
// text that ends in an incomplete UTF-8 sequence.
class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(const Tokenizer* tokenizer, std::span<const int32_t> context);
  std::string Push(int32_t id);
  // Whatever is held back (an incomplete UTF-8 tail becomes U+FFFD).
  std::string Flush();

 private:
  const Tokenizer* tokenizer_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0;
  size_t read_offset_ = 0;
};

}  // namespace pdserve

#endif  // PDSERVE_SHARED_TOKENIZER_H_
