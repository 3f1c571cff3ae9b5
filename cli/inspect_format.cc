#include "cli/inspect_format.h"

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cli/generate_command.h"

namespace pdserve {
namespace {

// 260032 -> "260,032".
std::string WithThousands(int64_t value) {
  std::string digits = absl::StrCat(value < 0 ? -value : value);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return value < 0 ? "-" + out : out;
}

// DTYPE_BF16 -> "bfloat16", as torch names dtypes.
std::string TorchDTypeName(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_F32:
      return "float32";
    case v1::DTYPE_BF16:
      return "bfloat16";
    case v1::DTYPE_F16:
      return "float16";
    default:
      return "unknown dtype";
  }
}

std::string ShapeText(const google::protobuf::RepeatedField<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// One module per line, indented two spaces a level, as torch prints
// nn.Module trees; parameter counts as trailing comments.
void AppendModule(const v1::ModuleNode& node, int depth, std::string* out) {
  const std::string indent(2 * depth, ' ');
  std::string line = indent;
  if (!node.name().empty()) absl::StrAppend(&line, "(", node.name(), "): ");
  if (node.repeat() > 1) absl::StrAppend(&line, node.repeat(), " x ");
  absl::StrAppend(&line, node.type(), "(");
  std::string comment;
  if (!node.tied_to().empty()) {
    comment = absl::StrCat("  # tied to ", node.tied_to());
  } else if (node.parameters() > 0 && node.repeat() > 1) {
    comment =
        absl::StrCat("  # ", node.repeat(), " x ", WithThousands(node.parameters() / node.repeat()),
                     " = ", WithThousands(node.parameters()), " parameters");
  } else if (node.parameters() > 0) {
    comment = absl::StrCat("  # ", WithThousands(node.parameters()), " parameters");
  }
  if (node.children().empty()) {
    absl::StrAppend(out, line, node.extra(), ")", comment, "\n");
    return;
  }
  absl::StrAppend(out, line, comment, "\n");
  for (const v1::ModuleNode& child : node.children()) AppendModule(child, depth + 1, out);
  absl::StrAppend(out, indent, ")\n");
}

// "[0.1234, -0.5678, 0.9012, ..., 0.3456]": PyTorch's summary of a long row.
std::string RowText(const float* row, int width) {
  constexpr int kEdge = 3;
  std::vector<std::string> items;
  for (int i = 0; i < width; ++i) {
    if (width > 2 * kEdge + 1 && i == kEdge) {
      items.push_back("...");
      i = width - kEdge - 1;
      continue;
    }
    items.push_back(absl::StrFormat("%.4f", row[i]));
  }
  return absl::StrCat("[", absl::StrJoin(items, ", "), "]");
}

std::string Piece(const v1::InspectResponse& response, int position) {
  return position >= 0 && position < response.pieces_size() ? response.pieces(position) : "?";
}

void AppendTensor(const v1::InspectResponse& response, const std::string& title,
                  const v1::TensorView& view, std::string* out) {
  absl::StrAppend(out, title, ": ", ShapeText(view.shape()), "\n");
  if (view.positions().empty() || view.shape().empty()) return;
  const int width = static_cast<int>(view.shape(view.shape_size() - 1));
  for (int i = 0; i < view.positions_size(); ++i) {
    if (static_cast<int64_t>(i + 1) * width > view.values_size()) break;
    const int position = view.positions(i);
    absl::StrAppend(out,
                    absl::StrFormat("  position %d (%s): ", position, Piece(response, position)),
                    RowText(view.values().data() + static_cast<size_t>(i) * width, width), "\n");
  }
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> ParseIntList(const std::string& text, const char* flag) {
  std::vector<int32_t> values;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int32_t value = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(item), &value)) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": '", std::string(item),
                                                     "' is not an integer (expected e.g. 0,3,-1)"));
    }
    values.push_back(value);
  }
  return values;
}

std::string FormatInspectResponse(const v1::InspectResponse& r) {
  std::string out;
  absl::StrAppend(&out, "tokens (", r.token_ids_size(), "):\n");
  for (int i = 0; i < r.token_ids_size(); ++i) {
    absl::StrAppend(&out, absl::StrFormat("  %4d  %6d  %s\n", i, r.token_ids(i), Piece(r, i)));
  }
  absl::StrAppend(&out, "\n");
  AppendModule(r.model(), 0, &out);
  absl::StrAppend(&out, "parameters: ", WithThousands(r.parameter_count()), "\n\n");

  AppendTensor(r, "final hidden state (after the final norm)", r.final_hidden(), &out);
  if (!r.kv_cache().empty()) {
    const v1::KvCacheLayer& first = r.kv_cache(0);
    absl::StrAppend(&out, "KV cache: ", r.kv_cache_size(), " layers of key ",
                    ShapeText(first.key_shape()), " and value ", ShapeText(first.value_shape()),
                    ", ", TorchDTypeName(r.kv_dtype()), "\n");
  }
  for (const v1::LayerHiddenStates& states : r.hidden_states()) {
    const std::string title = states.layer() < 0
                                  ? std::string("hidden states, embeddings output")
                                  : absl::StrCat("hidden states after layer ", states.layer());
    AppendTensor(r, title, states.hidden(), &out);
  }

  const int last = r.token_ids_size() - 1;
  absl::StrAppend(&out, "\ntop ", r.next_tokens_size(), " next tokens after position ", last, " (",
                  Piece(r, last), "):\n");
  absl::StrAppend(&out, absl::StrFormat("  %4s  %6s  %s  %11s  %9s\n", "rank", "id",
                                        PadToColumns("piece", 16), "probability", "logprob"));
  for (int i = 0; i < r.next_tokens_size(); ++i) {
    const v1::NextToken& next = r.next_tokens(i);
    absl::StrAppend(
        &out, absl::StrFormat("  %4d  %6d  %s  %11.6f  %9.4f\n", i + 1, next.id(),
                              PadToColumns(next.piece(), 16), next.probability(), next.logprob()));
  }
  absl::StrAppend(&out, absl::StrFormat("\n[prefill %.1f ms]\n", r.prefill_ms()));
  return out;
}

}  // namespace pdserve
