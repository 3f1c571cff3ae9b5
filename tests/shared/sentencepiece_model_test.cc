#include "shared/sentencepiece_model.h"

#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using ::testing::ElementsAre;

TEST(SentencePieceModelTest, Llama2Model) {
  SentencePieceModel model;
  std::string error;
  ASSERT_TRUE(model.Load(Llama2TokenizerModelPath(), &error)) << error;
  // tests/data/tokenizers/llama2/README.md: 32000 pieces, ids 0/1/2 =
  // <unk>/<s>/</s>, byte fallback.
  EXPECT_EQ(model.PieceSize(), 32000);
  EXPECT_EQ(model.unk_id(), 0);
  EXPECT_EQ(model.bos_id(), 1);
  EXPECT_EQ(model.eos_id(), 2);
  EXPECT_TRUE(model.IsUnknown(0));
  EXPECT_TRUE(model.IsControl(1));
  EXPECT_TRUE(model.IsControl(2));
  EXPECT_FALSE(model.IsControl(450));
  EXPECT_TRUE(model.IsByte(13));  // <0x0A>
  EXPECT_EQ(model.IdToPiece(13), "<0x0A>");
  EXPECT_FALSE(model.IsByte(450));
  EXPECT_FALSE(model.IsByte(-1));
  EXPECT_FALSE(model.IsByte(32000));
  EXPECT_EQ(model.IdToPiece(32000), "");
  EXPECT_EQ(model.PieceToId("\xE2\x96\x81The"), 450);
  EXPECT_EQ(model.PieceToId("no such piece at all"), 0);
  // cases.json: "The capital of France is".
  EXPECT_THAT(model.Encode("The capital of France is"), ElementsAre(450, 7483, 310, 3444, 338));
  EXPECT_EQ(model.Decode({450, 7483, 310, 3444, 338}), "The capital of France is");
  EXPECT_TRUE(model.Encode("").empty());
  EXPECT_EQ(model.Decode({}), "");
}

TEST(SentencePieceModelTest, LoadFailureExplains) {
  SentencePieceModel model;
  std::string error;
  EXPECT_FALSE(model.Load("/nonexistent/tokenizer.model", &error));
  EXPECT_FALSE(error.empty());

  TempDir dir;
  std::ofstream(dir.File("tokenizer.model")) << "garbage";
  error.clear();
  EXPECT_FALSE(model.Load(dir.File("tokenizer.model"), &error));
  EXPECT_FALSE(error.empty());
  EXPECT_TRUE(model.Encode("text").empty());  // nothing loaded: no ids, no crash
}

}  // namespace
}  // namespace pdserve
