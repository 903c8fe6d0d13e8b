// llama-aot Vulkan runtime plugin for the TVM runtime (apache-tvm 0.27 wheel).
//
// Shared declarations: the process-wide Vulkan instance, one logical device per chosen physical
// device, device buffers, and the command "batches" that kernels and copies are recorded into.
//
// Execution model (see docs/vulkan.md, "Runtime"):
//   * One compute queue per device.  Dispatches and device<->device copies are recorded into the
//     current command buffer (a Batch); every dispatch/copy is followed by a global memory barrier,
//     so commands execute as if serialized, in submission order.
//   * A batch is submitted (without waiting) after kFlushEvery commands; at most kMaxInFlight
//     batches are in flight.  Sync() submits the current batch and waits for all of them.
//   * Small host->device copies (KV-cache page tables, token ids: every step) are recorded in
//     the stream like a dispatch: the bytes go to a per-batch upload arena, no wait.  Larger
//     host->device copies and every device->host copy Sync() first, then memcpy into/out of
//     persistently mapped storage (device-local memory the host reads cached: lavapipe,
//     integrated GPUs, phones) or go through a staging buffer (discrete GPUs: their ReBAR window
//     is uncached for the host, reading logits from it costs milliseconds).
//   * Freed buffers of up to kRecycleMax bytes are kept for reuse by size (the VM and the KV
//     cache allocate the same small tensors every step; vkAllocateMemory is slow on some drivers).
//   * Objects that recorded commands may still use (buffers, pipelines) are destroyed only once
//     the batches that may reference them have completed (Device::Defer).
#ifndef LLAMA_AOT_VULKAN_VK_COMMON_H_
#define LLAMA_AOT_VULKAN_VK_COMMON_H_

#include <tvm/ffi/error.h>
#include <vulkan/vulkan.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace llama_aot {
namespace vulkan {

const char* VkResultName(VkResult r);

#define LLAMA_VK_CALL(expr)                                                                  \
  do {                                                                                       \
    VkResult llama_vk_r_ = (expr);                                                           \
    if (llama_vk_r_ != VK_SUCCESS) {                                                         \
      TVM_FFI_THROW(RuntimeError) << "Vulkan call " #expr " failed: "                        \
                                  << ::llama_aot::vulkan::VkResultName(llama_vk_r_);         \
    }                                                                                        \
  } while (0)

/*! \brief Set when the process is exiting: Vulkan objects are then leaked, not destroyed. */
extern std::atomic<bool> g_exiting;

constexpr uint32_t kBufferMagic = 0x4c4c564bu;  // "KVLL"

/*! \brief A storage buffer; AllocDataSpace returns a pointer to one of these. */
struct Buffer {
  uint32_t magic = kBufferMagic;
  int device_id = 0;
  VkBuffer buffer = VK_NULL_HANDLE;
  VkDeviceMemory memory = VK_NULL_HANDLE;
  VkDeviceSize size = 0;      // bytes usable by the caller (>= requested)
  uint8_t* mapped = nullptr;  // persistent host mapping (HOST_VISIBLE|HOST_COHERENT), or null
};

/*! \brief What we know about a physical device (queried once, without creating a device). */
struct PhysicalInfo {
  VkPhysicalDevice handle = VK_NULL_HANDLE;
  VkPhysicalDeviceProperties props{};
  VkPhysicalDeviceMemoryProperties mem{};
  uint32_t api_version = 0;  // min(instance, device)
  uint32_t subgroup_size = 1;      // default subgroup size of compute shaders
  uint32_t min_subgroup_size = 1;  // smallest size a compute shader may run with (Intel: 8..32)
  uint32_t subgroup_ops = 0;
  uint32_t queue_family = UINT32_MAX;
  uint32_t timestamp_bits = 0;  // timestampValidBits of that family (0: no GPU timers)
  std::vector<std::string> extensions;
  // shader features the device offers (all are enabled on the logical device)
  bool shader_int64 = false, shader_int16 = false, shader_float64 = false;
  bool shader_float16 = false, shader_int8 = false;
  bool storage_8bit = false, uniform_8bit = false, push_constant_8bit = false;
  bool storage_16bit = false, uniform_16bit = false, push_constant_16bit = false;
  bool maintenance4 = false;  // LocalSizeId in SPIR-V 1.6 shaders

  bool HasExtension(const char* name) const;
  std::string Name() const { return props.deviceName; }
  /*! \brief Device-local bytes (largest DEVICE_LOCAL heap). */
  uint64_t DeviceLocalBytes() const;
};

class Device;

/*! \brief Process-wide state: the instance and the ordered list of physical devices. */
class Runtime {
 public:
  static Runtime* Global();  // never destroyed (process exit must not race Vulkan teardown)

  /*! \brief Number of usable devices (0 when there is no driver). Never throws. */
  int DeviceCount();
  /*! \brief Why there is no device (empty when there is one). */
  std::string InitError();
  const PhysicalInfo& Info(int device_id);
  /*! \brief The logical device, created on first use. Throws when the id is invalid. */
  Device& Get(int device_id);
  VkInstance instance() { return instance_; }
  /*! \brief Validation messages of severity error (LLAMA_AOT_VULKAN_VALIDATION=1). */
  std::atomic<int64_t> validation_errors{0};

 private:
  Runtime() = default;
  void Init();
  std::once_flag init_once_;
  std::mutex mu_;
  std::string init_error_;
  VkInstance instance_ = VK_NULL_HANDLE;
  VkDebugUtilsMessengerEXT messenger_ = VK_NULL_HANDLE;
  uint32_t instance_api_ = VK_API_VERSION_1_1;
  std::vector<PhysicalInfo> infos_;
  std::vector<std::unique_ptr<Device>> devices_;
};

/*! \brief Host-visible chunks that a batch hands out in pieces and reuses once it completes. */
struct HostArena {
  std::vector<Buffer*> chunks;
  size_t chunk = 0;          // the chunk being filled
  VkDeviceSize offset = 0;   // first free byte in it
  void Rewind() { chunk = 0, offset = 0; }
};

/*! \brief One command buffer being recorded or in flight, with what it needs to stay alive. */
struct Batch {
  VkCommandBuffer cmd = VK_NULL_HANDLE;
  VkFence fence = VK_NULL_HANDLE;
  std::vector<VkDescriptorPool> pools;
  size_t pool_cursor = 0;
  HostArena ubo;      // uniform buffers for scalar arguments
  HostArena uploads;  // sources of small recorded uploads
  std::vector<std::function<void()>> on_complete;  // deferred destruction
  uint32_t commands = 0;
  VkQueryPool timestamps = VK_NULL_HANDLE;  // begin/end of the batch (LLAMA_AOT_VULKAN_TIMING=1)
  bool timed = false;
};

/*! \brief A compute pipeline for one kernel (see vk_module.cc). */
struct Pipeline {
  VkShaderModule shader = VK_NULL_HANDLE;
  VkDescriptorSetLayout set_layout = VK_NULL_HANDLE;
  VkPipelineLayout layout = VK_NULL_HANDLE;
  VkPipeline pipeline = VK_NULL_HANDLE;
  uint32_t num_buffers = 0;
  uint32_t push_bytes = 0;  // bytes of scalar arguments (8 per scalar)
  bool use_ubo = false;
};

/*! \brief A logical device with one compute queue. All public methods are thread-safe. */
class Device {
 public:
  Device(VkInstance instance, const PhysicalInfo& info, int device_id);
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  const PhysicalInfo& info() const { return info_; }
  VkDevice handle() const { return device_; }
  VkPipelineCache pipeline_cache() const { return pipeline_cache_; }
  bool maps_storage() const { return mapped_type_ != UINT32_MAX; }

  Buffer* Allocate(size_t nbytes);
  /*! \brief Frees once the commands that may use the buffer have completed. */
  void Free(Buffer* buf);
  /*! \brief Runs fn once the commands recorded so far have completed (now if none pending). */
  void Defer(std::function<void()> fn);

  void CopyHostToDevice(const void* src, Buffer* dst, size_t dst_offset, size_t nbytes);
  void CopyDeviceToHost(Buffer* src, size_t src_offset, void* dst, size_t nbytes);
  void CopyDeviceToDevice(Buffer* src, size_t src_offset, Buffer* dst, size_t dst_offset,
                          size_t nbytes);

  /*! \brief Records one dispatch. buffers: (buffer, offset) per storage binding, in order. */
  void Dispatch(const Pipeline& p, const std::vector<std::pair<Buffer*, VkDeviceSize>>& buffers,
                const void* scalars, uint32_t grid_x, uint32_t grid_y, uint32_t grid_z);

  /*! \brief Submits recorded commands and waits for everything in flight. */
  void Sync();
  /*! \brief DeviceAPI::StreamSync: Sync(), except when nothing but recorded uploads happened
   *  since the last one.  TVM's Tensor::CopyFromBytes calls it after every upload "in case the
   *  host data becomes unavailable"; a recorded upload already owns a copy of the bytes, and any
   *  host read syncs by itself, so waiting there would only add a GPU round trip per step. */
  void StreamSync();

  uint64_t dispatch_count() const { return dispatches_; }
  uint64_t submit_count() const { return submits_; }

  /*! \brief Counters for `device_info` (what a step costs besides kernels). */
  struct Stats {
    uint64_t syncs = 0, fence_wait_us = 0, uploads_recorded = 0, uploads_synced = 0,
             downloads = 0, allocations = 0, reused = 0;
    // LLAMA_AOT_VULKAN_TIMING=1 only: host time recording dispatches, GPU time of the batches
    uint64_t record_us = 0, gpu_busy_us = 0;
  };
  Stats stats() const { return stats_; }

 private:
  // all of these require mu_
  Batch& Current();
  void FlushLocked();
  void SyncLocked();
  void Recycle(Batch* b);
  void WaitOldestLocked();
  VkDescriptorSet AllocSetLocked(Batch& b, VkDescriptorSetLayout layout);
  /*! \brief nbytes at an `align`ed offset of a chunk of `arena` (new chunks: `usage`, >= `chunk_bytes`). */
  std::pair<Buffer*, VkDeviceSize> AllocArenaLocked(HostArena& arena, VkDeviceSize nbytes,
                                                    VkDeviceSize align, VkBufferUsageFlags usage,
                                                    VkDeviceSize chunk_bytes);
  Buffer* TakeRecycledLocked(size_t nbytes);
  Buffer* CreateBuffer(size_t nbytes, VkBufferUsageFlags usage, uint32_t mem_type, bool map);
  void DestroyBuffer(Buffer* buf);
  uint32_t FindMemoryType(uint32_t type_bits, VkMemoryPropertyFlags want,
                          VkMemoryPropertyFlags avoid = 0) const;
  Buffer* StagingLocked(size_t nbytes);

  const PhysicalInfo& info_;
  int device_id_;
  VkDevice device_ = VK_NULL_HANDLE;
  VkQueue queue_ = VK_NULL_HANDLE;
  VkCommandPool cmd_pool_ = VK_NULL_HANDLE;
  VkPipelineCache pipeline_cache_ = VK_NULL_HANDLE;
  uint32_t mapped_type_ = UINT32_MAX;  // device-local + host-visible + coherent, used for storage
  uint32_t device_type_ = UINT32_MAX;  // device-local (staging needed when not mapped_type_)
  uint32_t host_type_ = UINT32_MAX;    // host-visible + coherent (staging, uniform buffers)

  std::mutex mu_;
  Batch* current_ = nullptr;
  std::deque<Batch*> in_flight_;
  std::vector<Batch*> free_batches_;
  Buffer* staging_ = nullptr;
  bool only_uploads_since_sync_ = true;
  bool timing_ = false;  // LLAMA_AOT_VULKAN_TIMING=1 and the queue has timestamps
  double gpu_busy_ns_ = 0;  // nothing but recorded uploads since the last Sync
  std::vector<Buffer*> recycled_;  // freed storage buffers kept for reuse (<= kRecycleMax each)
  size_t recycled_bytes_ = 0;
  Stats stats_;
  uint64_t dispatches_ = 0, submits_ = 0;
  bool warned_range_ = false;
};

/*! \brief The device the calling thread set with DeviceAPI::SetDevice (default 0). */
int ActiveDeviceId();
void SetActiveDeviceId(int id);

}  // namespace vulkan
}  // namespace llama_aot

#endif  // LLAMA_AOT_VULKAN_VK_COMMON_H_
