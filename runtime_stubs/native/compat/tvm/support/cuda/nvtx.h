/*
 * llama-aot compat header (written for llama-aot, not taken from TVM).
 *
 * The shipped VM sources (vm.cc, paged_kv_cache.cc, attn_utils.h) open NVTX profiling ranges.
 * The on-device runtime has no CUDA, so the range is an object that does nothing.
 */
#ifndef LLAMA_AOT_COMPAT_TVM_SUPPORT_CUDA_NVTX_H_
#define LLAMA_AOT_COMPAT_TVM_SUPPORT_CUDA_NVTX_H_

#include <string>

namespace tvm {
namespace support {

/*! \brief No-op scoped profiling range (RAII shape kept so call sites compile unchanged). */
class NVTXScopedRange {
 public:
  explicit NVTXScopedRange(const char*) {}
  explicit NVTXScopedRange(const std::string&) {}
  NVTXScopedRange(const NVTXScopedRange&) = delete;
  NVTXScopedRange& operator=(const NVTXScopedRange&) = delete;
};

}  // namespace support
}  // namespace tvm

#endif  // LLAMA_AOT_COMPAT_TVM_SUPPORT_CUDA_NVTX_H_
