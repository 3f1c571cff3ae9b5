// Logits of one hidden state computed on the host, straight from the
// checkpoint's memory-mapped lm_head, for requests that must not wait for
// (or share) the engine thread's Backend, such as Inspect.
#ifndef PDSERVE_DECODE_SERVICE_HOST_LOGITS_H_
#define PDSERVE_DECODE_SERVICE_HOST_LOGITS_H_

#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "shared/host_tensor.h"

namespace pdserve {

// logits[i] = Σ_j lm_head[i, j] · hidden[j], accumulated in float64.
// lm_head: [vocab, hidden] row-major, F32, BF16 or F16 (nn.Linear layout);
// hidden: [hidden] float32 (the final RMSNorm output). Returns [vocab]
// float32. One core, vocab × hidden multiply-adds: about 0.1 s for Phi-3's
// 32064 × 3072, which is why the decode loop uses the Backend instead.
// INVALID_ARGUMENT naming lm_head when it is not 2-D, its columns differ
// from hidden's size, or its dtype is not a float type.
absl::StatusOr<std::vector<float>> HostLogits(const HostTensor& lm_head,
                                              std::span<const float> hidden);

}  // namespace pdserve

#endif  // PDSERVE_DECODE_SERVICE_HOST_LOGITS_H_
