// HostLogits against the float64 reference's logits (stories260K, tied
// lm_head) and against hand-computed products in BF16 and F16.
#include "decode_service/host_logits.h"

#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "shared/dtype.h"
#include "shared/model_config.h"
#include "shared/model_weights.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(HostLogitsTest, TiedStories260KHeadGivesTheReferenceLogits) {
  auto config = LoadModelConfig(Stories260KDir());
  ASSERT_TRUE(config.ok()) << config.status();
  auto weights = LoadModelWeights(Stories260KDir(), *config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  // The reference's final hidden state of "once_upon" and its logits row.
  const std::string dir = TestDataDir() + "/golden/";
  std::ifstream json_file(dir + "stories260K_forward.json");
  ASSERT_TRUE(json_file.good());
  const nlohmann::json golden = nlohmann::json::parse(json_file)["cases"][0];
  ASSERT_EQ(golden["name"], "once_upon");
  const std::vector<float> hidden = golden["final_hidden_last"].get<std::vector<float>>();
  const int vocab = golden["logits_shape"][1];
  const int last = static_cast<int>(golden["prompt"].size()) - 1;
  std::vector<float> expected(vocab);
  std::ifstream raw(dir + golden["logits_file"].get<std::string>(), std::ios::binary);
  raw.seekg(static_cast<std::streamoff>(last) * vocab * sizeof(float));
  raw.read(reinterpret_cast<char*>(expected.data()), vocab * sizeof(float));
  ASSERT_TRUE(raw.good());

  auto logits = HostLogits(weights->lm_head, hidden);
  ASSERT_TRUE(logits.ok()) << logits.status();
  ASSERT_EQ(logits->size(), static_cast<size_t>(vocab));
  float worst = 0.0f;
  for (int i = 0; i < vocab; ++i) worst = std::max(worst, std::fabs((*logits)[i] - expected[i]));
  EXPECT_LT(worst, 1e-4f);
}

// [[1, 2], [0.5, -1], [3, 0.25]] · [2, 4] = [10, -3, 7]: exact in every dtype.
TEST(HostLogitsTest, HalfPrecisionHeadsAreConverted) {
  const std::vector<float> values = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 0.25f};
  std::vector<uint16_t> bf16(values.size()), f16(values.size());
  ConvertFromFloat(values.data(), values.size(), DType::kBF16, bf16.data());
  ConvertFromFloat(values.data(), values.size(), DType::kF16, f16.data());
  for (auto [dtype, data] : {std::pair<DType, const void*>{DType::kBF16, bf16.data()},
                             {DType::kF16, f16.data()},
                             {DType::kF32, values.data()}}) {
    HostTensor head;
    head.name = "lm_head.weight";
    head.dtype = dtype;
    head.shape = {3, 2};
    head.data = data;
    head.num_bytes = values.size() * DTypeSize(dtype);
    auto logits = HostLogits(head, std::vector<float>{2.0f, 4.0f});
    ASSERT_TRUE(logits.ok()) << logits.status();
    EXPECT_THAT(*logits, ElementsAre(10.0f, -3.0f, 7.0f)) << DTypeName(dtype);
  }
}

TEST(HostLogitsTest, ShapeMismatchNamesTheTensor) {
  const std::vector<float> values(6, 1.0f);
  HostTensor head;
  head.name = "lm_head.weight";
  head.shape = {3, 2};
  head.data = values.data();
  head.num_bytes = values.size() * sizeof(float);
  auto logits = HostLogits(head, std::vector<float>(3, 1.0f));
  EXPECT_EQ(logits.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(logits.status().message(), HasSubstr("lm_head.weight"));
  EXPECT_THAT(logits.status().message(), HasSubstr("[3, 2]"));
  head.shape = {6};
  EXPECT_EQ(HostLogits(head, std::vector<float>(6, 1.0f)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pdserve
