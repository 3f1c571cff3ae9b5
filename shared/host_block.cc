#include "shared/host_block.h"

#include <memory>

namespace pdserve {
namespace {

class HeapHostBlock final : public HostBlock {
 public:
  explicit HeapHostBlock(size_t bytes) : HostBlock(new char[bytes], bytes) {}
  ~HeapHostBlock() override { delete[] data(); }
};

}  // namespace

HostBlockPtr MakeHeapHostBlock(size_t bytes) { return std::make_unique<HeapHostBlock>(bytes); }

}  // namespace pdserve
