/*
 * llama-aot compat header (written for llama-aot, not taken from TVM).
 *
 * In-memory streams used by the shipped runtime sources:
 *   BytesInStream(bytes | std::string | ptr,size)  reads sequentially from memory it does not own;
 *   BytesOutStream(std::string*)                     appends to a caller-owned string.
 * Included as "../support/bytes_io.h" / "../../support/bytes_io.h" from src/runtime[/vm]; the
 * build puts compat/src/runtime and compat/src/runtime/vm on the include path so that those
 * relative names resolve to this file.
 */
#ifndef LLAMA_AOT_COMPAT_SUPPORT_BYTES_IO_H_
#define LLAMA_AOT_COMPAT_SUPPORT_BYTES_IO_H_

#include <tvm/ffi/error.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <cstring>
#include <string>

namespace tvm {
namespace support {

class BytesInStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  BytesInStream(const void* data, size_t size)
      : begin_(static_cast<const char*>(data)), size_(size) {}
  explicit BytesInStream(const ffi::Bytes& bytes) : BytesInStream(bytes.data(), bytes.size()) {}
  explicit BytesInStream(const std::string& str) : BytesInStream(str.data(), str.size()) {}

  size_t Read(void* ptr, size_t size) override {
    size_t left = size_ - pos_;
    size_t n = size < left ? size : left;
    if (n != 0) std::memcpy(ptr, begin_ + pos_, n);
    pos_ += n;
    return n;
  }

  size_t Write(const void*, size_t) override {
    TVM_FFI_THROW(InternalError) << "BytesInStream is read-only";
    return 0;
  }

 private:
  const char* begin_;
  size_t size_;
  size_t pos_ = 0;
};

class BytesOutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit BytesOutStream(std::string* out) : out_(out) {}

  size_t Write(const void* ptr, size_t size) override {
    out_->append(static_cast<const char*>(ptr), size);
    return size;
  }

  size_t Read(void*, size_t) override {
    TVM_FFI_THROW(InternalError) << "BytesOutStream is write-only";
    return 0;
  }

 private:
  std::string* out_;
};

}  // namespace support
}  // namespace tvm

#endif  // LLAMA_AOT_COMPAT_SUPPORT_BYTES_IO_H_
