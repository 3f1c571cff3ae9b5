#include "shared/tokenizer.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "shared/file_util.h"
#include "shared/sentencepiece_model.h"
#include "shared/status_macros.h"

namespace pdserve {
namespace {

using Json = nlohmann::json;

// U+FFFD REPLACEMENT CHARACTER: what SentencePiece decodes an invalid or
// incomplete byte-fallback sequence to.
constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";

absl::StatusOr<Json> ParseJsonFile(const std::string& path) {
  PDSERVE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": JSON parse error: ", e.what()));
  }
}

absl::Status AddToken(const std::string& path, const std::string& text, const Json& id_value,
                      std::map<std::string, int32_t>& by_text,
                      std::map<int32_t, std::string>& by_id) {
  if (text.empty())
    return absl::InvalidArgumentError(absl::StrCat(path, ": an added token has empty text"));
  if (!id_value.is_number_integer() || id_value.get<int64_t>() < 0 ||
      id_value.get<int64_t>() > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": added token '", text, "' has id ",
                                                   id_value.dump(),
                                                   ", must be an integer in [0, 2^31)"));
  }
  const int32_t id = static_cast<int32_t>(id_value.get<int64_t>());
  auto [it, inserted] = by_id.emplace(id, text);
  if (!inserted && it->second != text) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": id ", id, " is given to both '", it->second, "' and '", text, "'"));
  }
  by_text[text] = id;
  return absl::OkStatus();
}

// added_tokens.json: {"<|user|>": 32010, ...}.
absl::Status ReadAddedTokensJson(const std::string& path, std::map<std::string, int32_t>& by_text,
                                 std::map<int32_t, std::string>& by_id) {
  PDSERVE_ASSIGN_OR_RETURN(Json json, ParseJsonFile(path));
  if (!json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": must be an object of text -> id"));
  }
  for (auto it = json.begin(); it != json.end(); ++it) {
    PDSERVE_RETURN_IF_ERROR(AddToken(path, it.key(), it.value(), by_text, by_id));
  }
  return absl::OkStatus();
}

// tokenizer.json (Hugging Face tokenizers): "added_tokens": [{"id": 32010,
// "content": "<|user|>", ...}, ...].
absl::Status ReadTokenizerJson(const std::string& path, std::map<std::string, int32_t>& by_text,
                               std::map<int32_t, std::string>& by_id) {
  PDSERVE_ASSIGN_OR_RETURN(Json json, ParseJsonFile(path));
  if (!json.is_object())
    return absl::InvalidArgumentError(absl::StrCat(path, ": must be an object"));
  auto list = json.find("added_tokens");
  if (list == json.end() || list->is_null()) return absl::OkStatus();
  if (!list->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": field 'added_tokens' must be a list"));
  }
  for (const Json& entry : *list) {
    if (!entry.is_object() || !entry.contains("content") || !entry["content"].is_string() ||
        !entry.contains("id")) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": each 'added_tokens' entry needs a string 'content' and an 'id', got ",
          entry.dump()));
    }
    PDSERVE_RETURN_IF_ERROR(
        AddToken(path, entry["content"].get<std::string>(), entry["id"], by_text, by_id));
  }
  return absl::OkStatus();
}

// One flag of an added-token entry: absent or null is false; anything but a
// boolean is INVALID_ARGUMENT naming the file, the token and the flag.
absl::StatusOr<bool> StripFlag(const std::string& path, const Json& entry, const char* flag) {
  auto value = entry.find(flag);
  if (value == entry.end() || value->is_null()) return false;
  if (!value->is_boolean()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": added token ", entry.dump(), ": '", flag, "' must be true or false"));
  }
  return value->get<bool>();
}

// Adds the lstrip/rstrip flags of `entries` (objects with "content") to
// `flags`, keeping those already there: tokenizer.json is read first, and
// Hugging Face's fast tokenizer takes its flags over tokenizer_config.json's.
absl::Status AddStripFlags(const std::string& path, const std::vector<const Json*>& entries,
                           std::map<std::string, std::pair<bool, bool>>& flags) {
  for (const Json* entry : entries) {
    if (!entry->is_object() || !entry->contains("content") || !(*entry)["content"].is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": an added token needs a string 'content', got ", entry->dump()));
    }
    PDSERVE_ASSIGN_OR_RETURN(const bool lstrip, StripFlag(path, *entry, "lstrip"));
    PDSERVE_ASSIGN_OR_RETURN(const bool rstrip, StripFlag(path, *entry, "rstrip"));
    flags.emplace((*entry)["content"].get<std::string>(), std::make_pair(lstrip, rstrip));
  }
  return absl::OkStatus();
}

// Every added token's (lstrip, rstrip), by text, from tokenizer.json's
// "added_tokens" list and then tokenizer_config.json's "added_tokens_decoder"
// object ({"32010": {"content": "<|user|>", "rstrip": true, ...}}); files
// that are absent add nothing.
absl::StatusOr<std::map<std::string, std::pair<bool, bool>>> ReadStripFlags(
    const std::string& model_dir) {
  std::map<std::string, std::pair<bool, bool>> flags;
  const std::string tokenizer_json_path = JoinPath(model_dir, "tokenizer.json");
  if (RegularFileExists(tokenizer_json_path)) {
    PDSERVE_ASSIGN_OR_RETURN(Json json, ParseJsonFile(tokenizer_json_path));
    auto list = json.is_object() ? json.find("added_tokens") : json.end();
    if (list != json.end() && list->is_array()) {
      std::vector<const Json*> entries;
      for (const Json& entry : *list) entries.push_back(&entry);
      PDSERVE_RETURN_IF_ERROR(AddStripFlags(tokenizer_json_path, entries, flags));
    }
  }
  const std::string config_path = JoinPath(model_dir, "tokenizer_config.json");
  if (RegularFileExists(config_path)) {
    PDSERVE_ASSIGN_OR_RETURN(Json json, ParseJsonFile(config_path));
    auto decoder = json.is_object() ? json.find("added_tokens_decoder") : json.end();
    if (decoder != json.end() && !decoder->is_null()) {
      if (!decoder->is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(config_path, ": 'added_tokens_decoder' must be an object of id -> token"));
      }
      std::vector<const Json*> entries;
      for (const Json& entry : *decoder) entries.push_back(&entry);
      PDSERVE_RETURN_IF_ERROR(AddStripFlags(config_path, entries, flags));
    }
  }
  return flags;
}

// Bytes of the character at `pos` when it has Unicode's White_Space property
// (PropList.txt: what Rust's char::is_whitespace, and so Hugging Face
// tokenizers' lstrip/rstrip, test); 0 otherwise, and for invalid UTF-8.
size_t WhiteSpaceBytesAt(std::string_view text, size_t pos) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte(pos);
  if (lead < 0x80) return (lead >= 0x09 && lead <= 0x0D) || lead == 0x20 ? 1 : 0;
  size_t length = 0;
  uint32_t code_point = 0;
  if ((lead & 0xE0) == 0xC0) {
    length = 2, code_point = lead & 0x1F;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3, code_point = lead & 0x0F;
  } else {
    return 0;  // no White_Space character needs four bytes
  }
  if (pos + length > text.size()) return 0;
  for (size_t k = 1; k < length; ++k) {
    if ((byte(pos + k) & 0xC0) != 0x80) return 0;
    code_point = (code_point << 6) | (byte(pos + k) & 0x3F);
  }
  const bool white_space = code_point == 0x85 || code_point == 0xA0 || code_point == 0x1680 ||
                           (code_point >= 0x2000 && code_point <= 0x200A) || code_point == 0x2028 ||
                           code_point == 0x2029 || code_point == 0x202F || code_point == 0x205F ||
                           code_point == 0x3000;
  return white_space ? length : 0;
}

// Where the run of White_Space characters that ends at `end` starts, not
// before `floor`.
size_t WhiteSpaceRunStart(std::string_view text, size_t floor, size_t end) {
  while (end > floor) {
    size_t start = end - 1;
    while (start > floor && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
    if (WhiteSpaceBytesAt(text, start) != end - start) break;
    end = start;
  }
  return end;
}

bool EndsWithReplacementCharacter(const std::string& text) {
  return text.size() >= kReplacementCharacter.size() &&
         text.compare(text.size() - kReplacementCharacter.size(), kReplacementCharacter.size(),
                      kReplacementCharacter) == 0;
}

// The part of `longer` after `shorter`. When `shorter` is not a byte prefix
// (it ended in U+FFFD that later ids completed), starts after the longest
// common prefix, backed off to a UTF-8 character boundary.
std::string Suffix(const std::string& longer, const std::string& shorter) {
  size_t common = 0;
  const size_t limit = std::min(longer.size(), shorter.size());
  while (common < limit && longer[common] == shorter[common]) ++common;
  if (common < shorter.size()) {
    while (common > 0 && (static_cast<unsigned char>(longer[common]) & 0xC0) == 0x80) --common;
  }
  return longer.substr(common);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& model_dir) {
  const std::string model_path = JoinPath(model_dir, "tokenizer.model");
  if (!RegularFileExists(model_path)) {
    return absl::NotFoundError(absl::StrCat(model_path, ": no such file"));
  }
  std::unique_ptr<Tokenizer> tokenizer(new Tokenizer());
  tokenizer->sp_ = std::make_unique<SentencePieceModel>();
  std::string error;
  if (!tokenizer->sp_->Load(model_path, &error)) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_path, ": sentencepiece rejects it: ", error));
  }
  const std::string added_tokens_path = JoinPath(model_dir, "added_tokens.json");
  const std::string tokenizer_json_path = JoinPath(model_dir, "tokenizer.json");
  if (RegularFileExists(added_tokens_path)) {
    PDSERVE_RETURN_IF_ERROR(
        ReadAddedTokensJson(added_tokens_path, tokenizer->added_by_text_, tokenizer->added_by_id_));
  } else if (RegularFileExists(tokenizer_json_path)) {
    PDSERVE_RETURN_IF_ERROR(
        ReadTokenizerJson(tokenizer_json_path, tokenizer->added_by_text_, tokenizer->added_by_id_));
  }
  PDSERVE_ASSIGN_OR_RETURN(auto flags, ReadStripFlags(model_dir));
  for (const auto& [text, strip] : flags) {
    if (tokenizer->added_by_text_.count(text) == 0 || !(strip.first || strip.second)) continue;
    tokenizer->strip_by_text_[text] = Strip{.lstrip = strip.first, .rstrip = strip.second};
  }
  return tokenizer;
}

Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  if (add_bos && sp_->bos_id() >= 0) ids.push_back(sp_->bos_id());
  // Like Hugging Face's legacy LlamaTokenizer, each stretch between added
  // tokens is encoded on its own, so each gets SentencePiece's dummy prefix.
  auto encode_segment = [&](std::string_view segment) {
    if (segment.empty()) return;
    for (int id : sp_->Encode(segment)) ids.push_back(id);
  };
  size_t segment_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    // Added tokens starting with this byte form one contiguous range of the
    // sorted map; take the longest that matches here.
    const std::string first_byte(1, text[pos]);
    size_t best_length = 0;
    int32_t best_id = -1;
    for (auto it = added_by_text_.lower_bound(first_byte);
         it != added_by_text_.end() && it->first[0] == text[pos]; ++it) {
      const std::string& candidate = it->first;
      if (candidate.size() > best_length && text.substr(pos, candidate.size()) == candidate) {
        best_length = candidate.size();
        best_id = it->second;
      }
    }
    if (best_length == 0) {
      ++pos;
      continue;
    }
    // Hugging Face's AddedToken lstrip/rstrip: the token's match grows over
    // the whitespace beside it, which then belongs to no segment.
    const auto strip = strip_by_text_.find(std::string(text.substr(pos, best_length)));
    const bool lstrip = strip != strip_by_text_.end() && strip->second.lstrip;
    const bool rstrip = strip != strip_by_text_.end() && strip->second.rstrip;
    const size_t segment_end = lstrip ? WhiteSpaceRunStart(text, segment_start, pos) : pos;
    encode_segment(text.substr(segment_start, segment_end - segment_start));
    ids.push_back(best_id);
    pos += best_length;
    while (rstrip && pos < text.size()) {
      const size_t white_space = WhiteSpaceBytesAt(text, pos);
      if (white_space == 0) break;
      pos += white_space;
    }
    segment_start = pos;
  }
  encode_segment(text.substr(segment_start));
  return ids;
}

std::string Tokenizer::Decode(std::span<const int32_t> ids) const {
  // Runs of SentencePiece ids are decoded together (so byte-fallback pieces
  // join into characters); an added token ends a run. Each run drops its
  // leading dummy-prefix space, mirroring Encode's per-segment encoding, so
  // Decode(Encode(text)) == text but for whitespace lstrip/rstrip tokens took.
  std::string text;
  std::vector<int> run;
  const int piece_size = sp_->PieceSize();
  auto flush_run = [&]() {
    if (run.empty()) return;
    text += sp_->Decode(run);
    run.clear();
  };
  for (int32_t id : ids) {
    if (id >= 0 && id < piece_size) {
      run.push_back(id);
      continue;
    }
    auto added = added_by_id_.find(id);
    if (added == added_by_id_.end()) continue;  // outside every vocabulary: nothing to render
    flush_run();
    text += added->second;
  }
  flush_run();
  return text;
}

std::string Tokenizer::IdToPiece(int32_t id) const {
  if (id >= 0 && id < sp_->PieceSize()) return sp_->IdToPiece(id);
  auto added = added_by_id_.find(id);
  return added == added_by_id_.end() ? std::string() : added->second;
}

int32_t Tokenizer::bos_id() const { return sp_->bos_id(); }

int32_t Tokenizer::eos_id() const { return sp_->eos_id(); }

int Tokenizer::vocab_size() const {
  int size = sp_->PieceSize();
  if (!added_by_id_.empty()) size = std::max(size, added_by_id_.rbegin()->first + 1);
  return size;
}

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer* tokenizer,
                                               std::span<const int32_t> context)
    : tokenizer_(tokenizer),
      ids_(context.begin(), context.end()),
      prefix_offset_(0),
      read_offset_(context.size()) {}

namespace {

// Decode(ids[*prefix_offset, read_offset)), first moving *prefix_offset back
// while that text is empty. SentencePiece drops the leading "▁" of every
// piece until some text has come out, so a window whose prefix renders
// nothing (a lone "▁" piece, a control id) would also swallow the space of
// the first new piece, which Decode of the whole sequence keeps. With text
// in front, every new piece decodes as in the whole sequence.
std::string NonEmptyPrefix(const Tokenizer& tokenizer, std::span<const int32_t> ids,
                           size_t* prefix_offset, size_t read_offset) {
  std::string text = tokenizer.Decode(ids.subspan(*prefix_offset, read_offset - *prefix_offset));
  while (text.empty() && *prefix_offset > 0) {
    --*prefix_offset;
    text = tokenizer.Decode(ids.subspan(*prefix_offset, read_offset - *prefix_offset));
  }
  return text;
}

}  // namespace

std::string IncrementalDetokenizer::Push(int32_t id) {
  ids_.push_back(id);
  const std::span<const int32_t> all(ids_);
  // The window starts at prefix_offset_ so that both decodes drop the same
  // leading space; their difference is what the new ids add.
  const std::string prefix_text = NonEmptyPrefix(*tokenizer_, all, &prefix_offset_, read_offset_);
  const std::string new_text = tokenizer_->Decode(all.subspan(prefix_offset_));
  if (new_text.size() <= prefix_text.size() || EndsWithReplacementCharacter(new_text)) {
    return std::string();  // nothing yet, or a character still incomplete
  }
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return Suffix(new_text, prefix_text);
}

std::string IncrementalDetokenizer::Flush() {
  if (read_offset_ == ids_.size()) return std::string();
  const std::span<const int32_t> all(ids_);
  const std::string prefix_text = NonEmptyPrefix(*tokenizer_, all, &prefix_offset_, read_offset_);
  const std::string new_text = tokenizer_->Decode(all.subspan(prefix_offset_));
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return Suffix(new_text, prefix_text);
}

}  // namespace pdserve
