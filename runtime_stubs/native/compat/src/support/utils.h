/*
 * llama-aot compat header (written for llama-aot, not taken from TVM).
 *
 * The one helper from TVM's src/support/utils.h that the runtime files we build use
 * (thread_pool.cc: validating CPU ids passed to runtime.config_threadpool).
 */
#ifndef LLAMA_AOT_COMPAT_SUPPORT_UTILS_H_
#define LLAMA_AOT_COMPAT_SUPPORT_UTILS_H_

#include <cctype>
#include <string>

namespace tvm {
namespace support {

/*! \return true when s is a non-empty run of decimal digits. */
inline bool IsNumber(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

}  // namespace support
}  // namespace tvm

#endif  // LLAMA_AOT_COMPAT_SUPPORT_UTILS_H_
