/*
 * llama-aot compat header (written for llama-aot, not taken from TVM).
 *
 * The apache-tvm 0.27 wheel ships runtime sources that include <tvm/support/io.h>, but not the
 * header itself.  This file provides the small API those sources use:
 *
 *   - support::Stream: an abstract byte stream with raw virtual Read/Write, plus typed
 *     Read<T>/Write<T>/ReadArray/WriteArray that dispatch to Serializer<T>;
 *   - support::Serializer<T, Enable>: the customization point.  The shipped sources and headers
 *     (tvm/runtime/vm/executable.h, src/runtime/metadata.h) specialize it with
 *     `template <> struct Serializer<X> { static constexpr bool enabled = true; Write; Read; }`,
 *     so the primary template must take a second (defaulted) parameter for enable_if.
 *
 * Concrete serializers are in <tvm/support/serializer.h>.
 */
#ifndef LLAMA_AOT_COMPAT_TVM_SUPPORT_IO_H_
#define LLAMA_AOT_COMPAT_TVM_SUPPORT_IO_H_

#include <cstddef>
#include <cstdint>

namespace tvm {
namespace support {

class Stream;

/*! \brief Serialization trait; `enabled` is false until a specialization says otherwise. */
template <typename T, typename Enable = void>
struct Serializer {
  static constexpr bool enabled = false;
};

/*! \brief Byte stream.  Subclasses implement the two raw methods (and must re-export the
 *         typed overloads with `using Stream::Read; using Stream::Write;`). */
class Stream {
 public:
  virtual ~Stream() = default;
  /*! \return number of bytes actually read (short on end of stream). */
  virtual size_t Read(void* ptr, size_t size) = 0;
  /*! \return number of bytes written. */
  virtual size_t Write(const void* ptr, size_t size) = 0;

  template <typename T>
  void Write(const T& value) {
    static_assert(Serializer<T>::enabled, "tvm::support::Serializer<T> is not specialized for T");
    Serializer<T>::Write(this, value);
  }

  template <typename T>
  bool Read(T* out) {
    static_assert(Serializer<T>::enabled, "tvm::support::Serializer<T> is not specialized for T");
    return Serializer<T>::Read(this, out);
  }

  template <typename T>
  void WriteArray(const T* values, size_t count) {
    for (size_t i = 0; i < count; ++i) Write<T>(values[i]);
  }

  template <typename T>
  bool ReadArray(T* out, size_t count) {
    for (size_t i = 0; i < count; ++i) {
      if (!Read<T>(out + i)) return false;
    }
    return true;
  }
};

}  // namespace support
}  // namespace tvm

#endif  // LLAMA_AOT_COMPAT_TVM_SUPPORT_IO_H_
