#include "shared/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/safetensors_writer.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::vector<uint16_t> Halves(const HostTensor& tensor) {
  std::vector<uint16_t> out(tensor.num_bytes / 2);
  std::memcpy(out.data(), tensor.data, tensor.num_bytes);
  return out;
}

std::vector<float> Floats(const HostTensor& tensor) {
  std::vector<float> out(tensor.num_bytes / 4);
  std::memcpy(out.data(), tensor.data, tensor.num_bytes);
  return out;
}

TEST(SafetensorsFileTest, RoundTripsEveryFloatDtype) {
  TempDir dir;
  const std::string path = dir.File("t.safetensors");
  // Values exactly representable in bf16 and f16, so the expected bits are
  // the IEEE encodings: 1.5, -2, 0.25.
  const std::vector<float> values = {1.5f, -2.0f, 0.25f};
  ASSERT_TRUE(WriteSafetensors(path,
                               {{{"a.f32", DType::kF32, {3}}, values},
                                {{"b.bf16", DType::kBF16, {1, 3}}, values},
                                {{"c.f16", DType::kF16, {3, 1}}, values},
                                {{"d.empty", DType::kF32, {0, 4}}, {}}},
                               {{"format", "pt"}})
                  .ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->path(), path);
  EXPECT_EQ((*file)->tensors().size(), 4u);  // "__metadata__" is not a tensor

  const HostTensor* f32 = (*file)->Find("a.f32");
  ASSERT_NE(f32, nullptr);
  EXPECT_EQ(f32->name, "a.f32");
  EXPECT_EQ(f32->dtype, DType::kF32);
  EXPECT_THAT(f32->shape, ElementsAre(3));
  EXPECT_EQ(f32->num_bytes, 12u);
  EXPECT_THAT(Floats(*f32), ElementsAre(1.5f, -2.0f, 0.25f));

  const struct {
    const char* name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint16_t> bits;
  } halves[] = {
      {"b.bf16", DType::kBF16, {1, 3}, {0x3fc0, 0xc000, 0x3e80}},
      {"c.f16", DType::kF16, {3, 1}, {0x3e00, 0xc000, 0x3400}},
  };
  for (const auto& expected : halves) {
    SCOPED_TRACE(expected.name);
    const HostTensor* tensor = (*file)->Find(expected.name);
    ASSERT_NE(tensor, nullptr);
    EXPECT_EQ(tensor->dtype, expected.dtype);
    EXPECT_EQ(tensor->shape, expected.shape);
    EXPECT_EQ(Halves(*tensor), expected.bits);
  }

  const HostTensor* empty = (*file)->Find("d.empty");
  ASSERT_NE(empty, nullptr);
  EXPECT_EQ(empty->num_bytes, 0u);
  EXPECT_EQ(empty->num_elements(), 0);

  EXPECT_EQ((*file)->Find("missing"), nullptr);
}

TEST(SafetensorsFileTest, ReadsTheBundledStories260K) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(Stories260KDir() + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  // models/stories260K/README.md: 47 tensors, 260,032 parameters, fp32.
  EXPECT_EQ((*file)->tensors().size(), 47u);
  int64_t parameters = 0;
  for (const auto& [name, tensor] : (*file)->tensors()) {
    EXPECT_EQ(tensor.dtype, DType::kF32) << name;
    parameters += tensor.num_elements();
  }
  EXPECT_EQ(parameters, 260032);
  const HostTensor* k_proj = (*file)->Find("model.layers.0.self_attn.k_proj.weight");
  ASSERT_NE(k_proj, nullptr);
  EXPECT_THAT(k_proj->shape, ElementsAre(32, 64));
}

// Writes `header` followed by `data` and returns Open's status.
absl::Status OpenRaw(const TempDir& dir, const std::string& header, const std::string& data,
                     std::optional<uint64_t> header_length = std::nullopt) {
  const std::string path = dir.File("bad.safetensors");
  EXPECT_TRUE(WriteRawSafetensors(path, header, data, header_length).ok());
  return SafetensorsFile::Open(path).status();
}

TEST(SafetensorsFileTest, MalformedFilesAreCleanErrors) {
  TempDir dir;
  const std::string sixteen_bytes(16, '\0');
  struct Case {
    const char* description;
    std::string header;
    std::optional<uint64_t> header_length;
    std::vector<const char*> message_parts;
  };
  const Case cases[] = {
      {"header length beyond the file",
       R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
       4096,
       {"header length 4096"}},
      {"header length near 2^64", "{}", ~uint64_t{0}, {"header length"}},
      {"bad JSON", R"({"w":{"dtype":"F32",)", std::nullopt, {"JSON"}},
      {"header not an object", "[1, 2]", std::nullopt, {"object"}},
      {"offsets beyond the data",
       R"({"w":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})",
       std::nullopt,
       {"'w'", "out of range", "16 bytes"}},
      {"offsets reversed",
       R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})",
       std::nullopt,
       {"'w'", "data_offsets"}},
      {"offsets not matching the shape",
       R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})",
       std::nullopt,
       {"'w'", "12 bytes", "[2, 2]", "16"}},
      {"shape overflowing int64",
       R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}})",
       std::nullopt,
       {"'w'", "data_offsets"}},
      {"unknown dtype",
       R"({"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})",
       std::nullopt,
       {"'ids'", "I64"}},
      {"fp8 dtype",
       R"({"w8":{"dtype":"F8_E4M3","shape":[16],"data_offsets":[0,16]}})",
       std::nullopt,
       {"'w8'", "F8_E4M3"}},
      {"missing dtype",
       R"({"w":{"shape":[4],"data_offsets":[0,16]}})",
       std::nullopt,
       {"'w'", "dtype"}},
      {"negative dimension",
       R"({"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})",
       std::nullopt,
       {"'w'", "shape"}},
      {"offsets not a pair",
       R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0]}})",
       std::nullopt,
       {"'w'", "data_offsets"}},
      {"entry not an object", R"({"w":[1,2,3]})", std::nullopt, {"'w'"}},
  };
  for (const Case& c : cases) {
    absl::Status status = OpenRaw(dir, c.header, sixteen_bytes, c.header_length);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.description << ": " << status;
    EXPECT_THAT(status.message(), HasSubstr("bad.safetensors")) << c.description;
    for (const char* part : c.message_parts) {
      EXPECT_THAT(status.message(), HasSubstr(part)) << c.description << ": " << status;
    }
  }
}

TEST(SafetensorsFileTest, TruncatedAndMissingFiles) {
  TempDir dir;
  std::ofstream(dir.File("short.safetensors")) << "abc";
  absl::Status status = SafetensorsFile::Open(dir.File("short.safetensors")).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr("3 bytes"));

  status = SafetensorsFile::Open(dir.File("absent.safetensors")).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_THAT(status.message(), HasSubstr("absent.safetensors"));

  status = SafetensorsFile::Open(dir.path()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
}

// Two shards of a three-tensor model plus an index.
void WriteShardedModel(const TempDir& dir) {
  ASSERT_TRUE(
      WriteSafetensors(dir.File("model-00001-of-00002.safetensors"),
                       {{{"a", DType::kF32, {2}}, {1, 2}}, {{"b", DType::kBF16, {2, 1}}, {3, 4}}})
          .ok());
  ASSERT_TRUE(WriteSafetensors(dir.File("model-00002-of-00002.safetensors"),
                               {{{"c", DType::kF16, {1}}, {5}}})
                  .ok());
  std::ofstream(dir.File("model.safetensors.index.json")) << R"({
    "metadata": {"total_size": 18},
    "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                   "c": "model-00002-of-00002.safetensors"}})";
}

TEST(TensorStoreTest, OpensShardedCheckpoint) {
  TempDir dir;
  WriteShardedModel(dir);
  absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Open(dir.path());
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_THAT((*store)->Names(), ElementsAre("a", "b", "c"));
  absl::StatusOr<const HostTensor*> c = (*store)->Get("c");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->dtype, DType::kF16);
  EXPECT_THAT(Halves(**c), ElementsAre(0x4500));  // 5.0 in binary16
  EXPECT_NE((*store)->Find("a"), nullptr);
  EXPECT_EQ((*store)->Find("z"), nullptr);

  absl::Status missing = (*store)->Get("z").status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr("'z'"));
}

TEST(TensorStoreTest, OpensSingleFile) {
  absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Open(Stories260KDir());
  ASSERT_TRUE(store.ok()) << store.status();
  const std::vector<std::string> names = (*store)->Names();
  EXPECT_EQ(names.size(), 47u);
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
}

TEST(TensorStoreTest, ShardErrors) {
  static constexpr char kIndex[] = "model.safetensors.index.json";
  static constexpr char kShard2[] = "model-00002-of-00002.safetensors";
  // Each case breaks a copy of WriteShardedModel's checkpoint.
  struct Case {
    const char* description;
    std::function<void(const TempDir&)> mutate;
    absl::StatusCode code;
    std::vector<const char*> message_parts;
  };
  auto write_index = [](const char* index) {
    return [index](const TempDir& dir) { std::ofstream(dir.File(kIndex)) << index; };
  };
  const Case cases[] = {
      {"missing shard",
       [](const TempDir& dir) { std::filesystem::remove(dir.File(kShard2)); },
       absl::StatusCode::kNotFound,
       {kShard2}},
      {"index names a tensor its shard lacks",
       write_index(R"({"weight_map": {
           "a": "model-00001-of-00002.safetensors", "d": "model-00002-of-00002.safetensors"}})"),
       absl::StatusCode::kInvalidArgument,
       {"'d'", kShard2}},
      {"index not JSON",
       write_index("{not json"),
       absl::StatusCode::kInvalidArgument,
       {"JSON", kIndex}},
      {"no weight_map",
       write_index(R"({"metadata": {}})"),
       absl::StatusCode::kInvalidArgument,
       {"weight_map", kIndex}},
      {"file name not a string",
       write_index(R"({"weight_map": {"a": 3}})"),
       absl::StatusCode::kInvalidArgument,
       {"'a'", kIndex}},
      {"file outside the directory",
       write_index(R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})"),
       absl::StatusCode::kInvalidArgument,
       {"'a'", kIndex}},
      {"absolute file name",
       write_index(R"({"weight_map": {"a": "/etc/passwd"}})"),
       absl::StatusCode::kInvalidArgument,
       {"'a'", kIndex}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.description);
    TempDir dir;
    WriteShardedModel(dir);
    c.mutate(dir);
    const absl::Status status = TensorStore::Open(dir.path()).status();
    EXPECT_EQ(status.code(), c.code) << status;
    for (const char* part : c.message_parts) {
      EXPECT_THAT(status.message(), HasSubstr(part)) << status;
    }
  }
  TempDir empty;
  absl::Status status = TensorStore::Open(empty.path()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_THAT(status.message(), HasSubstr("model.safetensors"));
}

TEST(TensorStoreTest, TableHashDependsOnTableOnly) {
  TempDir sharded;
  WriteShardedModel(sharded);
  TempDir single;
  // Same table, one file, different values.
  ASSERT_TRUE(
      WriteSafetensors(single.File("model.safetensors"), {{{"c", DType::kF16, {1}}, {9}},
                                                          {{"a", DType::kF32, {2}}, {7, 7}},
                                                          {{"b", DType::kBF16, {2, 1}}, {0, 0}}})
          .ok());
  auto hash_of = [](const std::string& dir) {
    absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Open(dir);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? (*store)->TableHash() : 0;
  };
  const uint64_t reference = hash_of(sharded.path());
  EXPECT_EQ(hash_of(single.path()), reference);

  // Any change of a name, dtype or shape changes it.
  const std::vector<std::vector<NamedTensor>> variants = {
      {{{"a", DType::kF32, {2}}, {0, 0}},
       {{"b", DType::kBF16, {2, 1}}, {0, 0}},
       {{"x", DType::kF16, {1}}, {0}}},
      {{{"a", DType::kF32, {2}}, {0, 0}},
       {{"b", DType::kF16, {2, 1}}, {0, 0}},
       {{"c", DType::kF16, {1}}, {0}}},
      {{{"a", DType::kF32, {2}}, {0, 0}},
       {{"b", DType::kBF16, {1, 2}}, {0, 0}},
       {{"c", DType::kF16, {1}}, {0}}},
      {{{"a", DType::kF32, {2}}, {0, 0}},
       {{"b", DType::kBF16, {2}}, {0, 0}},
       {{"c", DType::kF16, {1}}, {0}}},
      {{{"a", DType::kF32, {2}}, {0, 0}}, {{"b", DType::kBF16, {2, 1}}, {0, 0}}},
  };
  for (size_t i = 0; i < variants.size(); ++i) {
    TempDir dir;
    ASSERT_TRUE(WriteSafetensors(dir.File("model.safetensors"), variants[i]).ok());
    EXPECT_NE(hash_of(dir.path()), reference) << "variant " << i;
  }
}

}  // namespace
}  // namespace pdserve
