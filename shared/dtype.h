// Element types of tensors on the host, on a backend and on the wire.
#ifndef PDSERVE_SHARED_DTYPE_H_
#define PDSERVE_SHARED_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace pdserve {

enum class DType : int {
  kF32 = 0,
  kBF16 = 1,
  kF16 = 2,
  kI32 = 3,  // token ids, positions, slot mappings, block tables
};

// Bytes of one element.
constexpr size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kBF16:
    case DType::kF16:
      return 2;
  }
  return 0;
}

// "F32", "BF16", "F16", "I32": the safetensors spelling.
std::string_view DTypeName(DType dtype);

// bfloat16 is the top half of an IEEE float32; round to nearest even.
inline uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

inline float Bf16ToFloat(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// IEEE 754 binary16 <-> float32 (denormals, infinities and NaN preserved).
float F16ToFloat(uint16_t h);
uint16_t FloatToF16(float f);

// Converts `n` elements of `src` (dtype `src_dtype`, a float type) to float32.
void ConvertToFloat(const void* src, DType src_dtype, size_t n, float* dst);
// Converts `n` float32 values to `dst_dtype` (a float type).
void ConvertFromFloat(const float* src, size_t n, DType dst_dtype, void* dst);

}  // namespace pdserve

#endif  // PDSERVE_SHARED_DTYPE_H_
