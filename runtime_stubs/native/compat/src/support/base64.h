/*
 * llama-aot compat header (written for llama-aot, not taken from TVM).
 *
 * Base64 adapter streams used by src/runtime/tensor.cc for the JSON form of a tensor
 * ("__data_to_json__" / "__data_from_json__").  Standard alphabet with '=' padding, implemented
 * on top of tvm_ffi's Base64Encode/Base64Decode: the output stream buffers the raw bytes and
 * writes their encoding on Finish(); the input stream decodes everything on InitPosition().
 */
#ifndef LLAMA_AOT_COMPAT_SUPPORT_BASE64_H_
#define LLAMA_AOT_COMPAT_SUPPORT_BASE64_H_

#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/base64.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <cctype>
#include <cstring>
#include <string>

namespace tvm {
namespace support {

class Base64OutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64OutStream(Stream* sink) : sink_(sink) {}

  size_t Write(const void* ptr, size_t size) override {
    raw_.append(static_cast<const char*>(ptr), size);
    return size;
  }
  size_t Read(void*, size_t) override {
    TVM_FFI_THROW(InternalError) << "Base64OutStream is write-only";
    return 0;
  }
  /*! \brief Encode everything written so far and write it to the sink. */
  void Finish() {
    ffi::String enc = ffi::Base64Encode(ffi::Bytes(std::move(raw_)));
    raw_.clear();
    sink_->Write(static_cast<const void*>(enc.data()), enc.size());
  }

 private:
  Stream* sink_;
  std::string raw_;
};

class Base64InStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64InStream(Stream* source) : source_(source) {}

  /*! \brief Read the whole source, drop whitespace and decode it. */
  void InitPosition() {
    std::string text;
    char buf[4096];
    size_t n;
    while ((n = source_->Read(buf, sizeof(buf))) != 0) {
      for (size_t i = 0; i < n; ++i) {
        if (!std::isspace(static_cast<unsigned char>(buf[i]))) text.push_back(buf[i]);
      }
    }
    ffi::Bytes dec = ffi::Base64Decode(ffi::String(std::move(text)));
    decoded_.assign(dec.data(), dec.size());
    pos_ = 0;
  }
  size_t Read(void* ptr, size_t size) override {
    size_t left = decoded_.size() - pos_;
    size_t n = size < left ? size : left;
    if (n != 0) std::memcpy(ptr, decoded_.data() + pos_, n);
    pos_ += n;
    return n;
  }
  size_t Write(const void*, size_t) override {
    TVM_FFI_THROW(InternalError) << "Base64InStream is read-only";
    return 0;
  }

 private:
  Stream* source_;
  std::string decoded_;
  size_t pos_ = 0;
};

}  // namespace support
}  // namespace tvm

#endif  // LLAMA_AOT_COMPAT_SUPPORT_BASE64_H_
