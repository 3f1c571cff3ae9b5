#include "tests/testing/test_paths.h"

#include <stdlib.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <system_error>
#include <vector>

#ifndef PDSERVE_SOURCE_DIR
#error "PDSERVE_SOURCE_DIR must be defined by the build (tests/testing/CMakeLists.txt)"
#endif

namespace pdserve {

std::string SourceDir() {
  const char* from_env = std::getenv("PDSERVE_SOURCE_DIR");
  if (from_env != nullptr && from_env[0] != '\0') return from_env;
  return PDSERVE_SOURCE_DIR;
}

std::string Stories260KDir() { return SourceDir() + "/models/stories260K"; }

std::string TestDataDir() { return SourceDir() + "/tests/data"; }

std::string Llama2TokenizerModelPath() {
  return TestDataDir() + "/tokenizers/llama2/tokenizer.model";
}

TempDir::TempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  if (base == nullptr || base[0] == '\0') base = std::getenv("TMPDIR");
  if (base == nullptr || base[0] == '\0') base = "/tmp";
  std::string pattern = std::string(base) + "/pdserve_test_XXXXXX";
  std::vector<char> buffer(pattern.begin(), pattern.end());
  buffer.push_back('\0');
  if (::mkdtemp(buffer.data()) == nullptr) {
    std::perror(("TempDir: mkdtemp " + pattern).c_str());
    std::abort();
  }
  path_ = buffer.data();
}

TempDir::~TempDir() {
  std::error_code ignored;  // best effort: a leftover scratch dir must not fail a test
  std::filesystem::remove_all(path_, ignored);
}

std::string TempDir::File(const std::string& name) const { return path_ + "/" + name; }

}  // namespace pdserve
