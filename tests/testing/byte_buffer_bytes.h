// The bytes of a grpc::ByteBuffer, for tests of code that builds messages as
// byte buffers (the raw methods, the KvChunk encoder). Header-only, so that
// pdserve_testing itself needs no gRPC.
#ifndef PDSERVE_TESTS_TESTING_BYTE_BUFFER_BYTES_H_
#define PDSERVE_TESTS_TESTING_BYTE_BUFFER_BYTES_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace pdserve {

// Every slice of `buffer`, joined (a failed Dump fails the test).
inline std::string ByteBufferBytes(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return bytes;
}

}  // namespace pdserve

#endif  // PDSERVE_TESTS_TESTING_BYTE_BUFFER_BYTES_H_
