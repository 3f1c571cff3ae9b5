// CheckBufferRange against the definition: [offset, offset + n) within
// [0, num_elements), computed here in unsigned __int128 so that no sum can
// wrap, over every offset and length around the edges of a 10-element buffer
// and the lengths near SIZE_MAX that would wrap a size_t sum.
#include "shared/buffer_range.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>

namespace pdserve {
namespace {

using ::testing::HasSubstr;

// A buffer with a size and no memory: the check reads only num_elements().
class SizeOnlyBuffer final : public DeviceBuffer {
 public:
  explicit SizeOnlyBuffer(size_t num_elements) : DeviceBuffer(num_elements, DType::kF32) {}
  void* data() override { return nullptr; }
  const void* data() const override { return nullptr; }
};

TEST(CheckBufferRangeTest, AcceptsExactlyTheRangesInsideTheBuffer) {
  const SizeOnlyBuffer buffer(10);
  for (size_t offset : {size_t{0}, size_t{1}, size_t{9}, size_t{10}, size_t{11}, SIZE_MAX}) {
    for (size_t n :
         {size_t{0}, size_t{1}, size_t{9}, size_t{10}, size_t{11}, SIZE_MAX - 5, SIZE_MAX}) {
      SCOPED_TRACE(testing::Message() << "offset " << offset << " n " << n);
      const bool inside = static_cast<unsigned __int128>(offset) + n <= 10;
      const absl::Status status = CheckBufferRange(buffer, offset, n, "Op dst");
      if (inside) {
        EXPECT_TRUE(status.ok()) << status;
      } else {
        EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
        EXPECT_THAT(status.message(), HasSubstr("Op dst"));
        EXPECT_THAT(status.message(), HasSubstr("buffer's 10"));
      }
    }
  }
}

TEST(CheckBufferRangeTest, MessageNamesTheRange) {
  const SizeOnlyBuffer buffer(10);
  const absl::Status status = CheckBufferRange(buffer, 4, 7, "CopyToHost src");
  EXPECT_EQ(status.message(), "CopyToHost src: elements [4, 11) exceed the buffer's 10");
}

}  // namespace
}  // namespace pdserve
