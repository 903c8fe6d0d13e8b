/*
 * llama-aot runtime: SHA-256 (FIPS 180-4), for checking a package against its checksums.json before any of
 * its code is loaded.  Internal to libllama_aot_runtime.
 */
#ifndef LLAMA_AOT_SRC_SHA256_H_
#define LLAMA_AOT_SRC_SHA256_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace llama_aot {

class Sha256 {
 public:
  Sha256();
  void Update(const uint8_t* data, size_t len);
  std::string HexDigest();  // finishes the hash: call once

 private:
  void Block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

/*! \brief Lower-case hex SHA-256 of ``len`` bytes. */
std::string Sha256Hex(const uint8_t* data, size_t len);

}  // namespace llama_aot

#endif  // LLAMA_AOT_SRC_SHA256_H_
