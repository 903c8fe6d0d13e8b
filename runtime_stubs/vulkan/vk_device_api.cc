// llama-aot Vulkan runtime: tvm::runtime::DeviceAPI for kDLVulkan, registered as device_api.vulkan.
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>
#include <tvm/runtime/device_api.h>

#include <map>
#include <sstream>
#include <vector>

#include "vk_common.h"

namespace llama_aot {
namespace vulkan {

using tvm::ffi::Any;
using tvm::ffi::String;

Buffer* AsBuffer(const void* ptr, const char* what) {
  auto* b = static_cast<Buffer*>(const_cast<void*>(ptr));
  if (b == nullptr || b->magic != kBufferMagic) {
    TVM_FFI_THROW(RuntimeError) << "Vulkan: " << what
                                << " is not a buffer allocated by the llama-aot Vulkan runtime";
  }
  return b;
}

namespace {

bool IsHost(DLDevice d) { return d.device_type == kDLCPU || d.device_type == kDLCUDAHost; }

uint32_t MaxSpirvVersion(uint32_t api) {
  if (api >= VK_API_VERSION_1_3) return 0x10600;
  if (api >= VK_API_VERSION_1_2) return 0x10500;
  if (api >= VK_API_VERSION_1_1) return 0x10300;
  return 0x10000;
}

// Free lists of workspace buffers per device: TVMBackendAllocWorkspace is called around every
// kernel sequence that needs scratch space, so allocations are recycled.  Reusing a buffer right
// away is safe because commands run in submission order with a barrier after each one.
class WorkspacePool {
 public:
  Buffer* Alloc(Device& dev, size_t nbytes) {
    size_t need = (std::max<size_t>(nbytes, 1) + 1023) / 1024 * 1024;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(need);
      if (it != free_.end() && it->first <= need * 2) {
        Buffer* b = it->second;
        free_.erase(it);
        return b;
      }
    }
    return dev.Allocate(need);
  }
  void Free(Buffer* b) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.emplace(b->size, b);
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, Buffer*> free_;
};

}  // namespace

class VulkanDeviceAPI final : public tvm::runtime::DeviceAPI {
 public:
  static VulkanDeviceAPI* Global() {
    static auto* inst = new VulkanDeviceAPI();  // leaked on purpose (process exit ordering)
    return inst;
  }

  void SetDevice(DLDevice dev) final { SetActiveDeviceId(dev.device_id); }

  void GetAttr(DLDevice dev, tvm::runtime::DeviceAttrKind kind, Any* rv) final {
    using namespace tvm::runtime;
    Runtime* rt = Runtime::Global();
    if (kind == kExist) {
      *rv = static_cast<int64_t>(dev.device_id >= 0 && dev.device_id < rt->DeviceCount());
      return;
    }
    if (dev.device_id < 0 || dev.device_id >= rt->DeviceCount()) return;
    const PhysicalInfo& info = rt->Info(dev.device_id);
    const auto& lim = info.props.limits;
    switch (kind) {
      case kMaxThreadsPerBlock:
        *rv = static_cast<int64_t>(lim.maxComputeWorkGroupInvocations);
        break;
      case kWarpSize:
        *rv = static_cast<int64_t>(info.min_subgroup_size);
        break;
      case kMaxSharedMemoryPerBlock:
        *rv = static_cast<int64_t>(lim.maxComputeSharedMemorySize);
        break;
      case kComputeVersion: {
        std::ostringstream os;
        os << VK_API_VERSION_MAJOR(info.api_version) << "." << VK_API_VERSION_MINOR(info.api_version);
        *rv = String(os.str());
        break;
      }
      case kDeviceName:
        *rv = String(info.Name());
        break;
      case kMaxThreadDimensions: {
        std::ostringstream os;
        os << "[" << lim.maxComputeWorkGroupSize[0] << ", " << lim.maxComputeWorkGroupSize[1]
           << ", " << lim.maxComputeWorkGroupSize[2] << "]";
        *rv = String(os.str());
        break;
      }
      case kApiVersion:
        *rv = static_cast<int64_t>(info.api_version);
        break;
      case kDriverVersion:
        *rv = static_cast<int64_t>(info.props.driverVersion);
        break;
      case kTotalGlobalMemory:
        *rv = static_cast<int64_t>(info.DeviceLocalBytes());
        break;
      case kAvailableGlobalMemory: {
        if (!info.HasExtension(VK_EXT_MEMORY_BUDGET_EXTENSION_NAME)) break;
        VkPhysicalDeviceMemoryBudgetPropertiesEXT budget{
            VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT};
        VkPhysicalDeviceMemoryProperties2 mp{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_PROPERTIES_2};
        mp.pNext = &budget;
        vkGetPhysicalDeviceMemoryProperties2(info.handle, &mp);
        uint64_t best = 0;
        for (uint32_t i = 0; i < mp.memoryProperties.memoryHeapCount; ++i) {
          if (mp.memoryProperties.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) {
            uint64_t b = budget.heapBudget[i], u = budget.heapUsage[i];
            best = std::max<uint64_t>(best, b > u ? b - u : 0);
          }
        }
        *rv = static_cast<int64_t>(best);
        break;
      }
      default:
        break;  // not available through Vulkan: None
    }
  }

  void GetTargetProperty(DLDevice dev, const std::string& property, Any* rv) final {
    Runtime* rt = Runtime::Global();
    if (dev.device_id < 0 || dev.device_id >= rt->DeviceCount()) return;
    const PhysicalInfo& info = rt->Info(dev.device_id);
    const auto& lim = info.props.limits;
    auto i64 = [](auto v) { return static_cast<int64_t>(v); };
    const std::string& p = property;
    if (p == "max_num_threads" || p == "max_threads_per_block") {
      *rv = i64(lim.maxComputeWorkGroupInvocations);
    } else if (p == "thread_warp_size") {
      *rv = i64(info.min_subgroup_size);
    } else if (p == "max_block_size_x") {
      *rv = i64(lim.maxComputeWorkGroupSize[0]);
    } else if (p == "max_block_size_y") {
      *rv = i64(lim.maxComputeWorkGroupSize[1]);
    } else if (p == "max_block_size_z") {
      *rv = i64(lim.maxComputeWorkGroupSize[2]);
    } else if (p == "max_shared_memory_per_block") {
      *rv = i64(lim.maxComputeSharedMemorySize);
    } else if (p == "max_push_constants_size") {
      *rv = i64(lim.maxPushConstantsSize);
    } else if (p == "max_uniform_buffer_range") {
      *rv = i64(lim.maxUniformBufferRange);
    } else if (p == "max_storage_buffer_range") {
      *rv = i64(lim.maxStorageBufferRange);
    } else if (p == "max_per_stage_descriptor_storage_buffer") {
      *rv = i64(lim.maxPerStageDescriptorStorageBuffers);
    } else if (p == "supports_float16") {
      *rv = info.shader_float16;
    } else if (p == "supports_float32" || p == "supports_int32" ||
               p == "supports_storage_buffer_storage_class") {
      *rv = true;
    } else if (p == "supports_float64") {
      *rv = info.shader_float64;
    } else if (p == "supports_int8") {
      *rv = info.shader_int8;
    } else if (p == "supports_int16") {
      *rv = info.shader_int16;
    } else if (p == "supports_int64") {
      *rv = info.shader_int64;
    } else if (p == "supports_8bit_buffer") {
      *rv = info.storage_8bit;
    } else if (p == "supports_16bit_buffer") {
      *rv = info.storage_16bit;
    } else if (p == "supported_subgroup_operations") {
      *rv = i64(info.subgroup_ops);
    } else if (p == "vulkan_api_version") {
      *rv = i64(info.api_version);
    } else if (p == "max_spirv_version") {
      *rv = i64(MaxSpirvVersion(info.api_version));
    } else if (p == "device_name") {
      *rv = String(info.Name());
    } else if (p == "device_type") {
      static const char* kTypes[] = {"other", "integrated", "discrete", "virtual", "cpu"};
      int t = static_cast<int>(info.props.deviceType);
      *rv = String(t >= 0 && t <= 4 ? kTypes[t] : "other");
    } else if (p == "driver_version") {
      *rv = i64(info.props.driverVersion);
    } else if (p == "vendor_id") {
      *rv = i64(info.props.vendorID);
    }
  }

  void* AllocDataSpace(DLDevice dev, size_t nbytes, size_t alignment, DLDataType) final {
    return Runtime::Global()->Get(dev.device_id).Allocate(nbytes);
  }

  void FreeDataSpace(DLDevice dev, void* ptr) final {
    if (ptr == nullptr) return;
    Buffer* b = AsBuffer(ptr, "FreeDataSpace argument");
    Runtime::Global()->Get(b->device_id).Free(b);
  }

  void* AllocWorkspace(DLDevice dev, size_t nbytes, DLDataType) final {
    Device& d = Runtime::Global()->Get(dev.device_id);
    return Pool(dev.device_id).Alloc(d, nbytes);
  }

  void FreeWorkspace(DLDevice dev, void* ptr) final {
    if (ptr == nullptr) return;
    Buffer* b = AsBuffer(ptr, "FreeWorkspace argument");
    Pool(b->device_id).Free(b);
  }

  void StreamSync(DLDevice dev, TVMStreamHandle) final {
    Runtime::Global()->Get(dev.device_id).StreamSync();
  }

  // One queue per device; streams are not exposed.
  TVMStreamHandle CreateStream(DLDevice) final { return nullptr; }
  void FreeStream(DLDevice, TVMStreamHandle) final {}
  void SetStream(DLDevice, TVMStreamHandle) final {}
  TVMStreamHandle GetCurrentStream(DLDevice) final { return nullptr; }
  void SyncStreamFromTo(DLDevice, TVMStreamHandle, TVMStreamHandle) final {}

 protected:
  void CopyDataFromTo(const void* from, size_t from_offset, void* to, size_t to_offset,
                      size_t nbytes, DLDevice dev_from, DLDevice dev_to, DLDataType,
                      TVMStreamHandle) final {
    if (nbytes == 0) return;
    const bool from_vk = dev_from.device_type == kDLVulkan;
    const bool to_vk = dev_to.device_type == kDLVulkan;
    Runtime* rt = Runtime::Global();
    if (from_vk && to_vk) {
      Buffer* s = AsBuffer(from, "copy source");
      Buffer* d = AsBuffer(to, "copy destination");
      if (s->device_id == d->device_id) {
        rt->Get(s->device_id).CopyDeviceToDevice(s, from_offset, d, to_offset, nbytes);
      } else {
        std::vector<uint8_t> tmp(nbytes);
        rt->Get(s->device_id).CopyDeviceToHost(s, from_offset, tmp.data(), nbytes);
        rt->Get(d->device_id).CopyHostToDevice(tmp.data(), d, to_offset, nbytes);
      }
    } else if (from_vk && IsHost(dev_to)) {
      Buffer* s = AsBuffer(from, "copy source");
      rt->Get(s->device_id)
          .CopyDeviceToHost(s, from_offset, static_cast<uint8_t*>(to) + to_offset, nbytes);
    } else if (to_vk && IsHost(dev_from)) {
      Buffer* d = AsBuffer(to, "copy destination");
      rt->Get(d->device_id)
          .CopyHostToDevice(static_cast<const uint8_t*>(from) + from_offset, d, to_offset, nbytes);
    } else {
      TVM_FFI_THROW(RuntimeError) << "Vulkan runtime cannot copy from device type "
                                  << static_cast<int>(dev_from.device_type) << " to "
                                  << static_cast<int>(dev_to.device_type);
    }
  }

 private:
  WorkspacePool& Pool(int device_id) {
    std::lock_guard<std::mutex> lock(mu_);
    if (pools_.size() <= static_cast<size_t>(device_id)) pools_.resize(device_id + 1);
    if (!pools_[device_id]) pools_[device_id] = std::make_unique<WorkspacePool>();
    return *pools_[device_id];
  }
  std::mutex mu_;
  std::vector<std::unique_ptr<WorkspacePool>> pools_;
};

tvm::ffi::Map<String, Any> DeviceInfo(int device_id) {
  Runtime* rt = Runtime::Global();
  const PhysicalInfo& info = rt->Info(device_id);
  tvm::ffi::Map<String, Any> m;
  static const char* kKeys[] = {
      "max_num_threads",         "thread_warp_size",        "max_block_size_x",
      "max_block_size_y",        "max_block_size_z",        "max_shared_memory_per_block",
      "max_push_constants_size", "max_uniform_buffer_range", "max_storage_buffer_range",
      "max_per_stage_descriptor_storage_buffer", "supports_float16", "supports_float32",
      "supports_float64",        "supports_int8",           "supports_int16",
      "supports_int32",          "supports_int64",          "supports_8bit_buffer",
      "supports_16bit_buffer",   "supports_storage_buffer_storage_class",
      "supported_subgroup_operations", "vulkan_api_version", "max_spirv_version",
      "device_name",             "device_type",             "driver_version",
      "vendor_id"};
  DLDevice dev{kDLVulkan, device_id};
  for (const char* k : kKeys) {
    Any v;
    VulkanDeviceAPI::Global()->GetTargetProperty(dev, k, &v);
    if (v != nullptr) m.Set(k, v);
  }
  m.Set("subgroup_size", static_cast<int64_t>(info.subgroup_size));
  m.Set("min_subgroup_size", static_cast<int64_t>(info.min_subgroup_size));
  m.Set("device_local_bytes", static_cast<int64_t>(info.DeviceLocalBytes()));
  m.Set("max_compute_work_group_count_x",
        static_cast<int64_t>(info.props.limits.maxComputeWorkGroupCount[0]));
  Device& d = rt->Get(device_id);
  m.Set("host_mapped_storage", d.maps_storage());
  m.Set("dispatches", static_cast<int64_t>(d.dispatch_count()));
  m.Set("submits", static_cast<int64_t>(d.submit_count()));
  Device::Stats st = d.stats();
  m.Set("syncs", static_cast<int64_t>(st.syncs));
  m.Set("fence_wait_us", static_cast<int64_t>(st.fence_wait_us));
  m.Set("uploads_recorded", static_cast<int64_t>(st.uploads_recorded));
  m.Set("uploads_synced", static_cast<int64_t>(st.uploads_synced));
  m.Set("downloads", static_cast<int64_t>(st.downloads));
  m.Set("allocations", static_cast<int64_t>(st.allocations));
  m.Set("allocations_reused", static_cast<int64_t>(st.reused));
  m.Set("record_us", static_cast<int64_t>(st.record_us));
  m.Set("gpu_busy_us", static_cast<int64_t>(st.gpu_busy_us));
  return m;
}

}  // namespace vulkan
}  // namespace llama_aot

TVM_FFI_STATIC_INIT_BLOCK() {
  using tvm::ffi::Function;
  namespace v = llama_aot::vulkan;
  // override=true: a Python stand-in registered earlier must not make loading this plugin fail.
  Function::SetGlobal("device_api.vulkan", Function::FromTyped([]() -> void* {
                        return static_cast<tvm::runtime::DeviceAPI*>(v::VulkanDeviceAPI::Global());
                      }),
                      true);
  Function::SetGlobal("llama_aot.vulkan.device_count", Function::FromTyped([]() -> int64_t {
                        return v::Runtime::Global()->DeviceCount();
                      }),
                      true);
  Function::SetGlobal("llama_aot.vulkan.init_error", Function::FromTyped([]() -> tvm::ffi::String {
                        return v::Runtime::Global()->InitError();
                      }),
                      true);
  Function::SetGlobal("llama_aot.vulkan.device_info", Function::FromTyped(v::DeviceInfo), true);
  Function::SetGlobal("llama_aot.vulkan.validation_error_count",
                      Function::FromTyped([]() -> int64_t {
                        return v::Runtime::Global()->validation_errors.load();
                      }),
                      true);
}
