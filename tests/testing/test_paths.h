// Where tests find the repository's data, and a scratch directory per test.
#ifndef PDSERVE_TESTS_TESTING_TEST_PATHS_H_
#define PDSERVE_TESTS_TESTING_TEST_PATHS_H_

#include <string>

namespace pdserve {

// The repository root: $PDSERVE_SOURCE_DIR when set (a copied tree), else the
// source directory this library was configured from.
std::string SourceDir();

// <root>/models/stories260K: the bundled tiny Llama (see its README.md).
std::string Stories260KDir();

// <root>/tests/data.
std::string TestDataDir();

// <root>/tests/data/tokenizers/llama2/tokenizer.model: Llama 2 / Phi-3's
// SentencePiece model.
std::string Llama2TokenizerModelPath();

// A fresh directory under $TEST_TMPDIR or $TMPDIR (default /tmp), removed
// with everything in it on destruction. Aborts the test binary when it
// cannot be created: a test without scratch space cannot run meaningfully.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // path() + "/" + name.
  std::string File(const std::string& name) const;

 private:
  std::string path_;
};

}  // namespace pdserve

#endif  // PDSERVE_TESTS_TESTING_TEST_PATHS_H_
