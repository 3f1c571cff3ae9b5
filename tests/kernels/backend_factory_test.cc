// CreateBackend's device names and the CPU options it passes on.
#include "kernels/backend_factory.h"

#include <gtest/gtest.h>

#include <vector>

namespace pdserve {
namespace {

TEST(BackendFactoryTest, ParsesCpuWeightDtype) {
  EXPECT_EQ(ParseCpuWeightDtype("f32").value(), DType::kF32);
  EXPECT_EQ(ParseCpuWeightDtype("bf16").value(), DType::kBF16);
  for (const char* bad : {"", "F32", "fp16", "f16", "bfloat16"}) {
    absl::StatusOr<DType> parsed = ParseCpuWeightDtype(bad);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_NE(ParseCpuWeightDtype("x").status().message().find("--cpu_weight_dtype"),
            std::string::npos);
}

// The CPU backend stores a matrix as the options say.
TEST(BackendFactoryTest, CpuOptionsReachTheBackend) {
  const std::vector<float> values(6, 1.5f);
  const HostTensor matrix{"w", DType::kF32, {2, 3}, values.data(), values.size() * 4};
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    absl::StatusOr<std::unique_ptr<Backend>> backend =
        CreateBackend("cpu", CpuBackendOptions{.weight_dtype = dtype});
    ASSERT_TRUE(backend.ok()) << backend.status();
    EXPECT_EQ((*backend)->name(), "cpu");
    auto weight = (*backend)->UploadWeight(std::span<const HostTensor>(&matrix, 1));
    ASSERT_TRUE(weight.ok()) << weight.status();
    EXPECT_EQ((*weight)->dtype(), dtype);
  }
  EXPECT_EQ(CreateBackend("tpu", CpuBackendOptions{}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pdserve
