/*
 * llama-aot compat header (written for llama-aot, not taken from TVM).
 *
 * Serializer<T> specializations for the binary formats the TVM 0.27 runtime reads and writes
 * (Relax VM executable, tensors, parameter blobs, static-library modules).  The wire format:
 *   - arithmetic values and enums: their bytes, little-endian (byte-swapped on big-endian hosts);
 *   - std::string / ffi::String: u64 byte count, then the bytes;
 *   - std::vector<T> / ffi::Array<T>: u64 element count, then each element;
 *   - std::pair<A, B>: first then second; maps: u64 count then key/value pairs;
 *   - DLDataType: u8 code, u8 bits, u16 lanes;  DLDevice: i32 device_type, i32 device_id.
 */
#ifndef LLAMA_AOT_COMPAT_TVM_SUPPORT_SERIALIZER_H_
#define LLAMA_AOT_COMPAT_TVM_SUPPORT_SERIALIZER_H_

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/endian.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <cstdint>
#include <map>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tvm {
namespace support {
namespace compat_detail {

template <typename T>
inline void WritePOD(Stream* s, T v) {
  if constexpr (!TVM_FFI_IO_NO_ENDIAN_SWAP) ffi::ByteSwap(&v, sizeof(T), 1);
  s->Write(static_cast<const void*>(&v), sizeof(T));
}

template <typename T>
inline bool ReadPOD(Stream* s, T* v) {
  if (s->Read(static_cast<void*>(v), sizeof(T)) != sizeof(T)) return false;
  if constexpr (!TVM_FFI_IO_NO_ENDIAN_SWAP) ffi::ByteSwap(v, sizeof(T), 1);
  return true;
}

inline void WriteCount(Stream* s, size_t n) { WritePOD<uint64_t>(s, static_cast<uint64_t>(n)); }

inline bool ReadCount(Stream* s, size_t* n) {
  uint64_t v = 0;
  if (!ReadPOD<uint64_t>(s, &v)) return false;
  *n = static_cast<size_t>(v);
  return true;
}

inline void WriteBytes(Stream* s, const char* data, size_t n) {
  WriteCount(s, n);
  if (n != 0) s->Write(static_cast<const void*>(data), n);
}

inline bool ReadBytes(Stream* s, std::string* out) {
  size_t n = 0;
  if (!ReadCount(s, &n)) return false;
  out->resize(n);
  return n == 0 || s->Read(static_cast<void*>(&(*out)[0]), n) == n;
}

}  // namespace compat_detail

// Arithmetic scalars.
template <typename T>
struct Serializer<T, std::enable_if_t<std::is_arithmetic_v<T>>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const T& v) { compat_detail::WritePOD<T>(s, v); }
  static bool Read(Stream* s, T* v) { return compat_detail::ReadPOD<T>(s, v); }
};

// Enums travel as their underlying integer type.
template <typename T>
struct Serializer<T, std::enable_if_t<std::is_enum_v<T>>> {
  static constexpr bool enabled = true;
  using U = std::underlying_type_t<T>;
  static void Write(Stream* s, const T& v) { compat_detail::WritePOD<U>(s, static_cast<U>(v)); }
  static bool Read(Stream* s, T* v) {
    U u{};
    if (!compat_detail::ReadPOD<U>(s, &u)) return false;
    *v = static_cast<T>(u);
    return true;
  }
};

template <>
struct Serializer<std::string> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::string& v) {
    compat_detail::WriteBytes(s, v.data(), v.size());
  }
  static bool Read(Stream* s, std::string* v) { return compat_detail::ReadBytes(s, v); }
};

template <>
struct Serializer<ffi::String> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const ffi::String& v) {
    compat_detail::WriteBytes(s, v.data(), v.size());
  }
  static bool Read(Stream* s, ffi::String* v) {
    std::string tmp;
    if (!compat_detail::ReadBytes(s, &tmp)) return false;
    *v = ffi::String(std::move(tmp));
    return true;
  }
};

template <typename T>
struct Serializer<std::vector<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::vector<T>& v) {
    compat_detail::WriteCount(s, v.size());
    if constexpr (std::is_arithmetic_v<T> && TVM_FFI_IO_NO_ENDIAN_SWAP) {
      if (!v.empty()) s->Write(static_cast<const void*>(v.data()), sizeof(T) * v.size());
    } else {
      for (const T& e : v) Serializer<T>::Write(s, e);
    }
  }
  static bool Read(Stream* s, std::vector<T>* v) {
    size_t n = 0;
    if (!compat_detail::ReadCount(s, &n)) return false;
    v->resize(n);
    if constexpr (std::is_arithmetic_v<T> && TVM_FFI_IO_NO_ENDIAN_SWAP) {
      return n == 0 || s->Read(static_cast<void*>(v->data()), sizeof(T) * n) == sizeof(T) * n;
    } else {
      for (size_t i = 0; i < n; ++i) {
        if (!Serializer<T>::Read(s, &(*v)[i])) return false;
      }
      return true;
    }
  }
};

template <typename T>
struct Serializer<ffi::Array<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const ffi::Array<T>& v) {
    compat_detail::WriteCount(s, v.size());
    for (size_t i = 0; i < v.size(); ++i) Serializer<T>::Write(s, v[i]);
  }
  static bool Read(Stream* s, ffi::Array<T>* v) {
    size_t n = 0;
    if (!compat_detail::ReadCount(s, &n)) return false;
    ffi::Array<T> out;
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      T e{};
      if (!Serializer<T>::Read(s, &e)) return false;
      out.push_back(std::move(e));
    }
    *v = std::move(out);
    return true;
  }
};

template <typename A, typename B>
struct Serializer<std::pair<A, B>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::pair<A, B>& v) {
    Serializer<A>::Write(s, v.first);
    Serializer<B>::Write(s, v.second);
  }
  static bool Read(Stream* s, std::pair<A, B>* v) {
    return Serializer<A>::Read(s, &v->first) && Serializer<B>::Read(s, &v->second);
  }
};

namespace compat_detail {
template <typename MapT, typename K, typename V>
struct StdMapSerializer {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const MapT& m) {
    WriteCount(s, m.size());
    for (const auto& kv : m) {
      Serializer<K>::Write(s, kv.first);
      Serializer<V>::Write(s, kv.second);
    }
  }
  static bool Read(Stream* s, MapT* m) {
    size_t n = 0;
    if (!ReadCount(s, &n)) return false;
    m->clear();
    for (size_t i = 0; i < n; ++i) {
      K k{};
      V v{};
      if (!Serializer<K>::Read(s, &k) || !Serializer<V>::Read(s, &v)) return false;
      m->emplace(std::move(k), std::move(v));
    }
    return true;
  }
};
}  // namespace compat_detail

template <typename K, typename V>
struct Serializer<std::unordered_map<K, V>>
    : compat_detail::StdMapSerializer<std::unordered_map<K, V>, K, V> {};

template <typename K, typename V>
struct Serializer<std::map<K, V>> : compat_detail::StdMapSerializer<std::map<K, V>, K, V> {};

template <>
struct Serializer<DLDataType> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const DLDataType& t) {
    compat_detail::WritePOD<uint8_t>(s, t.code);
    compat_detail::WritePOD<uint8_t>(s, t.bits);
    compat_detail::WritePOD<uint16_t>(s, t.lanes);
  }
  static bool Read(Stream* s, DLDataType* t) {
    return compat_detail::ReadPOD<uint8_t>(s, &t->code) &&
           compat_detail::ReadPOD<uint8_t>(s, &t->bits) &&
           compat_detail::ReadPOD<uint16_t>(s, &t->lanes);
  }
};

template <>
struct Serializer<DLDevice> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const DLDevice& d) {
    compat_detail::WritePOD<int32_t>(s, static_cast<int32_t>(d.device_type));
    compat_detail::WritePOD<int32_t>(s, static_cast<int32_t>(d.device_id));
  }
  static bool Read(Stream* s, DLDevice* d) {
    int32_t type = 0, id = 0;
    if (!compat_detail::ReadPOD<int32_t>(s, &type) || !compat_detail::ReadPOD<int32_t>(s, &id)) {
      return false;
    }
    d->device_type = static_cast<DLDeviceType>(type);
    d->device_id = id;
    return true;
  }
};

}  // namespace support
}  // namespace tvm

#endif  // LLAMA_AOT_COMPAT_TVM_SUPPORT_SERIALIZER_H_
