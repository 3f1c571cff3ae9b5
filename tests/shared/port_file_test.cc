#include "shared/port_file.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace pdserve {
namespace {

class PortFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = std::filesystem::temp_directory_path().string() + "/port_file_test-XXXXXX";
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST_F(PortFileTest, WritesPortAndLeavesNoTemporary) {
  const std::string path = dir_ + "/port";
  ASSERT_TRUE(WritePortFile(path, 50051).ok());
  EXPECT_EQ(ReadAll(path), "50051\n");
  ASSERT_TRUE(WritePortFile(path, 7).ok());  // replaces
  EXPECT_EQ(ReadAll(path), "7\n");
  int entries = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
    (void)entry;
    ++entries;
  }
  EXPECT_EQ(entries, 1);
}

TEST_F(PortFileTest, RejectsPortOutOfRange) {
  const absl::Status status = WritePortFile(dir_ + "/port", 0);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("[1, 65535]"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/port"));
}

TEST_F(PortFileTest, MissingDirectoryNamesPath) {
  const std::string path = dir_ + "/no/such/dir/port";
  const absl::Status status = WritePortFile(path, 80);
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_NE(status.message().find(dir_ + "/no/such/dir/port"), std::string::npos);
}

}  // namespace
}  // namespace pdserve
