// The Transformer on a CPU backend with bfloat16 weights
// (CpuBackendOptions::weight_dtype) against the independent float64
// reference of stories260K (tests/data/golden/stories260K_forward.json, the
// same golden data tests/shared/transformer_test.cc checks float32 against).
//
// The bound: bfloat16 keeps 8 significant bits, so every weight and every
// GEMM input moves by up to 2^-9 of itself. Through 5 layers of 7 GEMMs the
// errors add up to a few percent of a logit's typical size at most, far
// below the gap between a model and a broken one (a wrong row, a dropped
// tail or a misrounded half would move logits by their whole size). So each
// logit must be within 5% of the largest |logit| of its row.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "shared/model_config.h"
#include "shared/model_weights.h"
#include "shared/transformer.h"
#include "tests/testing/golden_forward.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

TEST(CpuBackendBf16ModelTest, LogitsOfEveryPromptPositionStayNearTheReference) {
  auto config = LoadModelConfig(Stories260KDir());
  ASSERT_TRUE(config.ok()) << config.status();
  auto weights = LoadModelWeights(Stories260KDir(), *config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  std::unique_ptr<Backend> backend = CreateCpuBackend({.weight_dtype = DType::kBF16});
  auto model = Transformer::Create(*config, *weights, backend.get());
  ASSERT_TRUE(model.ok()) << model.status();

  const absl::StatusOr<std::vector<GoldenForwardCase>> golden = LoadGoldenForwardCases();
  ASSERT_TRUE(golden.ok()) << golden.status();
  ASSERT_FALSE(golden->empty());
  double worst_fraction = 0.0;
  for (const GoldenForwardCase& c : *golden) {
    for (size_t length = 1; length <= c.prompt.size(); ++length) {
      SCOPED_TRACE(testing::Message() << c.name << " prefix " << length);
      auto hidden = (*model)->Prefill(std::span<const int32_t>(c.prompt).first(length), nullptr);
      ASSERT_TRUE(hidden.ok()) << hidden.status();
      auto logits = (*model)->ComputeLogits(*hidden, 1);
      ASSERT_TRUE(logits.ok()) << logits.status();
      const std::span<const float> expected = c.Row(static_cast<int>(length) - 1);
      double scale = 0.0, worst = 0.0;
      for (int j = 0; j < c.vocab; ++j) {
        scale = std::max(scale, std::fabs(static_cast<double>(expected[j])));
        const double d = std::fabs((*logits)[j] - static_cast<double>(expected[j]));
        worst = std::isnan(d) ? INFINITY : std::max(worst, d);
      }
      ASSERT_LE(worst, 0.05 * scale);
      worst_fraction = std::max(worst_fraction, worst / scale);
    }
  }
  RecordProperty("worst_fraction_of_max_logit", std::to_string(worst_fraction));
  std::printf("worst |logit - reference| / max |logit|: %.4f\n", worst_fraction);
}

}  // namespace
}  // namespace pdserve
