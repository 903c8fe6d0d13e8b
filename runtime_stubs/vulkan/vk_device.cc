// llama-aot Vulkan runtime: instance, device selection, buffers, command batches, copies.
#include <algorithm>
#include <chrono>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "vk_common.h"

namespace llama_aot {
namespace vulkan {

std::atomic<bool> g_exiting{false};

namespace {

constexpr uint32_t kFlushEvery = 128;        // commands per batch before it is submitted
constexpr size_t kMaxInFlight = 3;           // submitted batches before we wait for the oldest
constexpr uint32_t kSetsPerPool = 256;       // descriptor sets per descriptor pool
constexpr VkDeviceSize kUboChunk = 64 << 10;  // bytes per uniform-buffer chunk
constexpr size_t kRecordedUploadMax = 256 << 10;  // larger host->device copies sync instead
constexpr VkDeviceSize kUploadChunk = 1 << 20;    // bytes per upload-arena chunk
constexpr size_t kRecycleMax = 16 << 20;          // freed buffers up to this size are reused
constexpr size_t kRecycleBudget = 256 << 20;      // bytes of freed buffers kept at most
constexpr size_t kStagingMax = 64 << 20;     // staging buffer limit (copies are chunked)

thread_local int t_active_device = 0;

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

bool EnvFlag(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}

VKAPI_ATTR VkBool32 VKAPI_CALL DebugCallback(VkDebugUtilsMessageSeverityFlagBitsEXT severity,
                                             VkDebugUtilsMessageTypeFlagsEXT,
                                             const VkDebugUtilsMessengerCallbackDataEXT* data,
                                             void*) {
  if (severity >= VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT) {
    bool error = severity >= VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT;
    if (error) Runtime::Global()->validation_errors.fetch_add(1);
    std::fprintf(stderr, "[llama-aot vulkan %s] %s\n", error ? "ERROR" : "warning",
                 data && data->pMessage ? data->pMessage : "");
  }
  return VK_FALSE;
}

void MarkExiting() { g_exiting.store(true); }

// Barrier after a command: make its writes visible to later compute and transfer commands.
void RecordBarrier(VkCommandBuffer cmd, VkPipelineStageFlags src_stage, VkAccessFlags src_access,
                   VkPipelineStageFlags dst_stage, VkAccessFlags dst_access) {
  VkMemoryBarrier mb{};
  mb.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER;
  mb.srcAccessMask = src_access;
  mb.dstAccessMask = dst_access;
  vkCmdPipelineBarrier(cmd, src_stage, dst_stage, 0, 1, &mb, 0, nullptr, 0, nullptr);
}

constexpr VkAccessFlags kAnyComputeOrTransfer =
    VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_READ_BIT |
    VK_ACCESS_TRANSFER_WRITE_BIT;
constexpr VkPipelineStageFlags kComputeOrTransfer =
    VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;

// Feature structs of one physical device, chained for vkGetPhysicalDeviceFeatures2 and reused
// (with the same values) for vkCreateDevice.
struct FeatureChain {
  VkPhysicalDeviceFeatures2 f2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
  VkPhysicalDeviceVulkan11Features v11{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES};
  VkPhysicalDeviceVulkan12Features v12{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
  VkPhysicalDevice16BitStorageFeatures s16{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES};
  VkPhysicalDevice8BitStorageFeaturesKHR s8{
      VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_8BIT_STORAGE_FEATURES_KHR};
  VkPhysicalDeviceShaderFloat16Int8FeaturesKHR f16i8{
      VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES_KHR};
  VkPhysicalDeviceVulkan13Features v13{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_3_FEATURES};
  VkPhysicalDeviceMaintenance4FeaturesKHR m4{
      VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_4_FEATURES_KHR};

  // Links the structs that apply to a device of this API version / these extensions.
  void Link(uint32_t api, bool has_8bit_ext, bool has_f16i8_ext, bool has_m4_ext) {
    void** next = &f2.pNext;
    auto push = [&next](auto* s) {
      *next = s;
      next = &s->pNext;
    };
    if (api >= VK_API_VERSION_1_2) {
      push(&v11);
      push(&v12);
    } else {
      push(&s16);
      if (has_8bit_ext) push(&s8);
      if (has_f16i8_ext) push(&f16i8);
    }
    // maintenance4: SPIR-V 1.6 shaders (glslang --target-env vulkan1.3) use LocalSizeId.
    if (api >= VK_API_VERSION_1_3) {
      push(&v13);
    } else if (has_m4_ext) {
      push(&m4);
    }
    *next = nullptr;
  }
};

}  // namespace

int ActiveDeviceId() { return t_active_device; }
void SetActiveDeviceId(int id) { t_active_device = id; }

const char* VkResultName(VkResult r) {
  switch (r) {
#define CASE(x) \
  case x:       \
    return #x;
    CASE(VK_SUCCESS)
    CASE(VK_NOT_READY)
    CASE(VK_TIMEOUT)
    CASE(VK_INCOMPLETE)
    CASE(VK_ERROR_OUT_OF_HOST_MEMORY)
    CASE(VK_ERROR_OUT_OF_DEVICE_MEMORY)
    CASE(VK_ERROR_INITIALIZATION_FAILED)
    CASE(VK_ERROR_DEVICE_LOST)
    CASE(VK_ERROR_MEMORY_MAP_FAILED)
    CASE(VK_ERROR_LAYER_NOT_PRESENT)
    CASE(VK_ERROR_EXTENSION_NOT_PRESENT)
    CASE(VK_ERROR_FEATURE_NOT_PRESENT)
    CASE(VK_ERROR_INCOMPATIBLE_DRIVER)
    CASE(VK_ERROR_TOO_MANY_OBJECTS)
    CASE(VK_ERROR_FORMAT_NOT_SUPPORTED)
    CASE(VK_ERROR_FRAGMENTED_POOL)
    CASE(VK_ERROR_OUT_OF_POOL_MEMORY)
    CASE(VK_ERROR_INVALID_SHADER_NV)
    CASE(VK_ERROR_UNKNOWN)
#undef CASE
    default:
      return "VkResult(other)";
  }
}

bool PhysicalInfo::HasExtension(const char* name) const {
  return std::find(extensions.begin(), extensions.end(), name) != extensions.end();
}

uint64_t PhysicalInfo::DeviceLocalBytes() const {
  uint64_t best = 0;
  for (uint32_t i = 0; i < mem.memoryHeapCount; ++i) {
    if (mem.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) {
      best = std::max<uint64_t>(best, mem.memoryHeaps[i].size);
    }
  }
  return best;
}

// ------------------------------------------------------------------------------------------------
// Runtime

Runtime* Runtime::Global() {
  static Runtime* inst = [] {
    std::atexit(MarkExiting);
    return new Runtime();
  }();
  return inst;
}

void Runtime::Init() {
  auto enumerate_version = reinterpret_cast<PFN_vkEnumerateInstanceVersion>(
      vkGetInstanceProcAddr(nullptr, "vkEnumerateInstanceVersion"));
  uint32_t loader_api = VK_API_VERSION_1_0;
  if (enumerate_version != nullptr) enumerate_version(&loader_api);
  if (loader_api < VK_API_VERSION_1_1) {
    init_error_ = "the Vulkan loader only offers Vulkan 1.0 (1.1 is required)";
    return;
  }
  instance_api_ = std::min<uint32_t>(loader_api, VK_API_VERSION_1_3);

  uint32_t n = 0;
  vkEnumerateInstanceExtensionProperties(nullptr, &n, nullptr);
  std::vector<VkExtensionProperties> exts(n);
  vkEnumerateInstanceExtensionProperties(nullptr, &n, exts.data());
  auto has_ext = [&](const char* name) {
    for (auto& e : exts)
      if (std::strcmp(e.extensionName, name) == 0) return true;
    return false;
  };
  std::vector<const char*> enable_exts, layers;
  VkInstanceCreateFlags flags = 0;
  if (has_ext(VK_KHR_PORTABILITY_ENUMERATION_EXTENSION_NAME)) {  // MoltenVK
    enable_exts.push_back(VK_KHR_PORTABILITY_ENUMERATION_EXTENSION_NAME);
    flags |= VK_INSTANCE_CREATE_ENUMERATE_PORTABILITY_BIT_KHR;
  }
  bool validation = false;
  if (EnvFlag("LLAMA_AOT_VULKAN_VALIDATION")) {
    vkEnumerateInstanceLayerProperties(&n, nullptr);
    std::vector<VkLayerProperties> lps(n);
    vkEnumerateInstanceLayerProperties(&n, lps.data());
    for (auto& l : lps) {
      if (std::strcmp(l.layerName, "VK_LAYER_KHRONOS_validation") == 0) validation = true;
    }
    if (validation && has_ext(VK_EXT_DEBUG_UTILS_EXTENSION_NAME)) {
      layers.push_back("VK_LAYER_KHRONOS_validation");
      enable_exts.push_back(VK_EXT_DEBUG_UTILS_EXTENSION_NAME);
    } else {
      validation = false;
      std::fprintf(stderr,
                   "[llama-aot vulkan] LLAMA_AOT_VULKAN_VALIDATION is set but "
                   "VK_LAYER_KHRONOS_validation is not installed\n");
    }
  }

  VkApplicationInfo app{VK_STRUCTURE_TYPE_APPLICATION_INFO};
  app.pApplicationName = "llama-aot";
  app.pEngineName = "llama-aot-tvm";
  app.apiVersion = instance_api_;
  VkInstanceCreateInfo ci{VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
  ci.flags = flags;
  ci.pApplicationInfo = &app;
  ci.enabledExtensionCount = static_cast<uint32_t>(enable_exts.size());
  ci.ppEnabledExtensionNames = enable_exts.data();
  ci.enabledLayerCount = static_cast<uint32_t>(layers.size());
  ci.ppEnabledLayerNames = layers.data();
  VkResult r = vkCreateInstance(&ci, nullptr, &instance_);
  if (r != VK_SUCCESS) {
    instance_ = VK_NULL_HANDLE;
    init_error_ = std::string("vkCreateInstance failed (") + VkResultName(r) +
                  "): no Vulkan driver installed?";
    return;
  }
  if (validation) {
    auto create = reinterpret_cast<PFN_vkCreateDebugUtilsMessengerEXT>(
        vkGetInstanceProcAddr(instance_, "vkCreateDebugUtilsMessengerEXT"));
    if (create != nullptr) {
      VkDebugUtilsMessengerCreateInfoEXT mi{VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT};
      mi.messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                           VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT;
      mi.messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                       VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                       VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT;
      mi.pfnUserCallback = DebugCallback;
      create(instance_, &mi, nullptr, &messenger_);
    }
  }

  uint32_t count = 0;
  vkEnumeratePhysicalDevices(instance_, &count, nullptr);
  std::vector<VkPhysicalDevice> pds(count);
  if (count) vkEnumeratePhysicalDevices(instance_, &count, pds.data());
  std::vector<PhysicalInfo> all;
  for (VkPhysicalDevice pd : pds) {
    PhysicalInfo info;
    info.handle = pd;
    vkGetPhysicalDeviceProperties(pd, &info.props);
    info.api_version = std::min(instance_api_, info.props.apiVersion);
    if (info.api_version < VK_API_VERSION_1_1) continue;
    vkGetPhysicalDeviceMemoryProperties(pd, &info.mem);
    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, nullptr);
    std::vector<VkQueueFamilyProperties> qfs(nq);
    vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, qfs.data());
    for (uint32_t i = 0; i < nq; ++i) {
      if (qfs[i].queueFlags & VK_QUEUE_COMPUTE_BIT) {
        info.queue_family = i;
        info.timestamp_bits = qfs[i].timestampValidBits;
        break;
      }
    }
    if (info.queue_family == UINT32_MAX) continue;
    uint32_t ne = 0;
    vkEnumerateDeviceExtensionProperties(pd, nullptr, &ne, nullptr);
    std::vector<VkExtensionProperties> dexts(ne);
    vkEnumerateDeviceExtensionProperties(pd, nullptr, &ne, dexts.data());
    for (auto& e : dexts) info.extensions.emplace_back(e.extensionName);

    VkPhysicalDeviceSubgroupProperties sub{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
    VkPhysicalDeviceSubgroupSizeControlPropertiesEXT ssc{
        VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_SIZE_CONTROL_PROPERTIES_EXT};
    VkPhysicalDeviceProperties2 p2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
    p2.pNext = &sub;
    bool has_ssc = info.api_version >= VK_API_VERSION_1_3 ||
                   info.HasExtension(VK_EXT_SUBGROUP_SIZE_CONTROL_EXTENSION_NAME);
    if (has_ssc) sub.pNext = &ssc;
    vkGetPhysicalDeviceProperties2(pd, &p2);
    info.subgroup_size = std::max<uint32_t>(1, sub.subgroupSize);
    info.min_subgroup_size = info.subgroup_size;
    if (has_ssc && ssc.minSubgroupSize > 0 && ssc.minSubgroupSize < ssc.maxSubgroupSize) {
      // Variable subgroup size (Intel: 8..32): a pipeline may run with any size in [min, max].
      info.min_subgroup_size = std::min(info.subgroup_size, ssc.minSubgroupSize);
    }
    info.subgroup_ops = sub.supportedOperations;

    FeatureChain fc;
    fc.Link(info.api_version, info.HasExtension(VK_KHR_8BIT_STORAGE_EXTENSION_NAME),
            info.HasExtension(VK_KHR_SHADER_FLOAT16_INT8_EXTENSION_NAME),
            info.HasExtension(VK_KHR_MAINTENANCE_4_EXTENSION_NAME));
    vkGetPhysicalDeviceFeatures2(pd, &fc.f2);
    info.shader_int64 = fc.f2.features.shaderInt64;
    info.shader_int16 = fc.f2.features.shaderInt16;
    info.shader_float64 = fc.f2.features.shaderFloat64;
    if (info.api_version >= VK_API_VERSION_1_2) {
      info.storage_16bit = fc.v11.storageBuffer16BitAccess;
      info.uniform_16bit = fc.v11.uniformAndStorageBuffer16BitAccess;
      info.push_constant_16bit = fc.v11.storagePushConstant16;
      info.shader_float16 = fc.v12.shaderFloat16;
      info.shader_int8 = fc.v12.shaderInt8;
      info.storage_8bit = fc.v12.storageBuffer8BitAccess;
      info.uniform_8bit = fc.v12.uniformAndStorageBuffer8BitAccess;
      info.push_constant_8bit = fc.v12.storagePushConstant8;
    } else {
      info.storage_16bit = fc.s16.storageBuffer16BitAccess;
      info.uniform_16bit = fc.s16.uniformAndStorageBuffer16BitAccess;
      info.push_constant_16bit = fc.s16.storagePushConstant16;
      info.shader_float16 = fc.f16i8.shaderFloat16;
      info.shader_int8 = fc.f16i8.shaderInt8;
      info.storage_8bit = fc.s8.storageBuffer8BitAccess;
      info.uniform_8bit = fc.s8.uniformAndStorageBuffer8BitAccess;
      info.push_constant_8bit = fc.s8.storagePushConstant8;
    }
    info.maintenance4 = info.api_version >= VK_API_VERSION_1_3 ? fc.v13.maintenance4 : fc.m4.maintenance4;
    all.push_back(std::move(info));
  }
  if (all.empty()) {
    init_error_ = "no Vulkan 1.1 device with a compute queue";
    return;
  }
  // Device selection: $LLAMA_AOT_VULKAN_DEVICE = index or (case-insensitive) name substring.
  // The chosen device becomes device 0, the others follow in enumeration order.
  size_t chosen = 0;
  if (const char* sel = std::getenv("LLAMA_AOT_VULKAN_DEVICE"); sel != nullptr && *sel != '\0') {
    std::string s(sel);
    bool numeric = std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
    chosen = all.size();
    if (numeric) {
      size_t idx = std::strtoul(s.c_str(), nullptr, 10);
      if (idx < all.size()) chosen = idx;
    } else {
      for (size_t i = 0; i < all.size(); ++i) {
        if (Lower(all[i].Name()).find(Lower(s)) != std::string::npos) {
          chosen = i;
          break;
        }
      }
    }
    if (chosen == all.size()) {
      std::string names;
      for (auto& d : all) names += (names.empty() ? "" : ", ") + d.Name();
      init_error_ = "LLAMA_AOT_VULKAN_DEVICE=" + s + " matches no Vulkan device (have: " + names + ")";
      return;
    }
  }
  infos_.push_back(all[chosen]);
  for (size_t i = 0; i < all.size(); ++i) {
    if (i != chosen) infos_.push_back(all[i]);
  }
  devices_.resize(infos_.size());
}

int Runtime::DeviceCount() {
  std::call_once(init_once_, [this] { Init(); });
  return static_cast<int>(infos_.size());
}

std::string Runtime::InitError() {
  DeviceCount();
  return init_error_;
}

const PhysicalInfo& Runtime::Info(int device_id) {
  int n = DeviceCount();
  if (device_id < 0 || device_id >= n) {
    if (n == 0) TVM_FFI_THROW(RuntimeError) << "no Vulkan device: " << init_error_;
    TVM_FFI_THROW(RuntimeError) << "Vulkan device " << device_id << " does not exist (" << n
                                << " device(s))";
  }
  return infos_[device_id];
}

Device& Runtime::Get(int device_id) {
  const PhysicalInfo& info = Info(device_id);
  std::lock_guard<std::mutex> lock(mu_);
  if (!devices_[device_id]) {
    devices_[device_id] = std::make_unique<Device>(instance_, info, device_id);
  }
  return *devices_[device_id];
}

// ------------------------------------------------------------------------------------------------
// Device

Device::Device(VkInstance instance, const PhysicalInfo& info, int device_id)
    : info_(info), device_id_(device_id) {
  const bool api12 = info.api_version >= VK_API_VERSION_1_2;
  std::vector<const char*> exts;
  auto enable_if = [&](const char* name) {
    if (info.HasExtension(name)) exts.push_back(name);
  };
  enable_if("VK_KHR_portability_subset");  // required when offered (MoltenVK)
  enable_if(VK_EXT_MEMORY_BUDGET_EXTENSION_NAME);
  if (!api12) {
    enable_if(VK_KHR_8BIT_STORAGE_EXTENSION_NAME);
    enable_if(VK_KHR_SHADER_FLOAT16_INT8_EXTENSION_NAME);
  }
  if (info.api_version < VK_API_VERSION_1_3 && info.maintenance4) {
    enable_if(VK_KHR_MAINTENANCE_4_EXTENSION_NAME);
  }
  // Enable every shader feature the device has (the kernels were compiled for a target that
  // says which ones they use).
  FeatureChain fc;
  fc.Link(info.api_version, info.HasExtension(VK_KHR_8BIT_STORAGE_EXTENSION_NAME),
          info.HasExtension(VK_KHR_SHADER_FLOAT16_INT8_EXTENSION_NAME),
          info.HasExtension(VK_KHR_MAINTENANCE_4_EXTENSION_NAME));
  fc.f2.features.shaderInt64 = info.shader_int64;
  fc.f2.features.shaderInt16 = info.shader_int16;
  fc.f2.features.shaderFloat64 = info.shader_float64;
  if (api12) {
    fc.v11.storageBuffer16BitAccess = info.storage_16bit;
    fc.v11.uniformAndStorageBuffer16BitAccess = info.uniform_16bit;
    fc.v11.storagePushConstant16 = info.push_constant_16bit;
    fc.v12.shaderFloat16 = info.shader_float16;
    fc.v12.shaderInt8 = info.shader_int8;
    fc.v12.storageBuffer8BitAccess = info.storage_8bit;
    fc.v12.uniformAndStorageBuffer8BitAccess = info.uniform_8bit;
    fc.v12.storagePushConstant8 = info.push_constant_8bit;
  } else {
    fc.s16.storageBuffer16BitAccess = info.storage_16bit;
    fc.s16.uniformAndStorageBuffer16BitAccess = info.uniform_16bit;
    fc.s16.storagePushConstant16 = info.push_constant_16bit;
    fc.s8.storageBuffer8BitAccess = info.storage_8bit;
    fc.s8.uniformAndStorageBuffer8BitAccess = info.uniform_8bit;
    fc.s8.storagePushConstant8 = info.push_constant_8bit;
    fc.f16i8.shaderFloat16 = info.shader_float16;
    fc.f16i8.shaderInt8 = info.shader_int8;
  }
  fc.v13.maintenance4 = info.maintenance4;
  fc.m4.maintenance4 = info.maintenance4;
  float prio = 1.0f;
  VkDeviceQueueCreateInfo qci{VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
  qci.queueFamilyIndex = info.queue_family;
  qci.queueCount = 1;
  qci.pQueuePriorities = &prio;
  VkDeviceCreateInfo dci{VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
  dci.pNext = &fc.f2;
  dci.queueCreateInfoCount = 1;
  dci.pQueueCreateInfos = &qci;
  dci.enabledExtensionCount = static_cast<uint32_t>(exts.size());
  dci.ppEnabledExtensionNames = exts.data();
  LLAMA_VK_CALL(vkCreateDevice(info.handle, &dci, nullptr, &device_));
  vkGetDeviceQueue(device_, info.queue_family, 0, &queue_);

  VkCommandPoolCreateInfo pci{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
  pci.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
  pci.queueFamilyIndex = info.queue_family;
  LLAMA_VK_CALL(vkCreateCommandPool(device_, &pci, nullptr, &cmd_pool_));
  VkPipelineCacheCreateInfo pcci{VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO};
  LLAMA_VK_CALL(vkCreatePipelineCache(device_, &pcci, nullptr, &pipeline_cache_));
  const char* env_timing = std::getenv("LLAMA_AOT_VULKAN_TIMING");
  timing_ = env_timing != nullptr && std::strcmp(env_timing, "1") == 0 && info.timestamp_bits > 0;

  // Memory types that storage buffers may live in.
  VkBufferCreateInfo bci{VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
  bci.size = 256;
  bci.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
              VK_BUFFER_USAGE_TRANSFER_DST_BIT;
  bci.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
  VkBuffer probe;
  LLAMA_VK_CALL(vkCreateBuffer(device_, &bci, nullptr, &probe));
  VkMemoryRequirements req;
  vkGetBufferMemoryRequirements(device_, probe, &req);
  vkDestroyBuffer(device_, probe, nullptr);
  const VkMemoryPropertyFlags kLocal = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT;
  const VkMemoryPropertyFlags kHost =
      VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
  device_type_ = FindMemoryType(req.memoryTypeBits, kLocal);
  host_type_ = FindMemoryType(req.memoryTypeBits, kHost | VK_MEMORY_PROPERTY_HOST_CACHED_BIT);
  if (host_type_ == UINT32_MAX) host_type_ = FindMemoryType(req.memoryTypeBits, kHost);
  if (host_type_ == UINT32_MAX) {
    TVM_FFI_THROW(RuntimeError) << "Vulkan device " << info.Name()
                                << " has no host-visible coherent memory";
  }
  // Map storage buffers directly when device-local memory is host-visible in a heap that holds
  // (nearly) all device memory and the host reads it through its caches: unified memory
  // (lavapipe, integrated GPUs, phones).  Not on discrete GPUs: their ReBAR window is uncached
  // for the host (a 0.5 MB logits read took ~15 ms on an H200), and a small BAR window (256 MiB
  // without ReBAR) cannot hold the weights.  LLAMA_AOT_VULKAN_MAPPED=0/1 overrides.
  const char* env_mapped = std::getenv("LLAMA_AOT_VULKAN_MAPPED");
  const bool unified = info.props.deviceType == VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU ||
                       info.props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU;
  uint32_t mt = FindMemoryType(req.memoryTypeBits, kLocal | kHost | VK_MEMORY_PROPERTY_HOST_CACHED_BIT);
  if (mt == UINT32_MAX && (unified || (env_mapped != nullptr && *env_mapped))) {
    mt = FindMemoryType(req.memoryTypeBits, kLocal | kHost);
  }
  if (device_type_ == UINT32_MAX) {  // no device-local memory at all
    device_type_ = host_type_;
    mt = host_type_;
  }
  if (mt != UINT32_MAX) {
    uint64_t heap = info.mem.memoryHeaps[info.mem.memoryTypes[mt].heapIndex].size;
    bool big = heap * 2 >= info.DeviceLocalBytes();
    if (env_mapped != nullptr && *env_mapped) {
      mapped_type_ = std::strcmp(env_mapped, "0") == 0 ? UINT32_MAX : mt;
    } else if (big) {
      mapped_type_ = mt;
    }
  }
}

Device::~Device() {
  if (g_exiting.load() || device_ == VK_NULL_HANDLE) return;
  try {
    Sync();
  } catch (...) {
  }
  for (Buffer* b : recycled_) DestroyBuffer(b);
  // Batches, pools and buffers are released with the device by the driver.
}

uint32_t Device::FindMemoryType(uint32_t type_bits, VkMemoryPropertyFlags want,
                                VkMemoryPropertyFlags avoid) const {
  for (uint32_t i = 0; i < info_.mem.memoryTypeCount; ++i) {
    VkMemoryPropertyFlags f = info_.mem.memoryTypes[i].propertyFlags;
    if ((type_bits & (1u << i)) && (f & want) == want && (f & avoid) == 0) return i;
  }
  return UINT32_MAX;
}

Buffer* Device::CreateBuffer(size_t nbytes, VkBufferUsageFlags usage, uint32_t mem_type, bool map) {
  auto* b = new Buffer();
  b->device_id = device_id_;
  b->size = std::max<size_t>(16, (nbytes + 15) / 16 * 16);
  VkBufferCreateInfo bci{VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
  bci.size = b->size;
  bci.usage = usage;
  bci.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
  VkResult r = vkCreateBuffer(device_, &bci, nullptr, &b->buffer);
  if (r != VK_SUCCESS) {
    delete b;
    TVM_FFI_THROW(RuntimeError) << "vkCreateBuffer(" << nbytes << " bytes) failed: "
                                << VkResultName(r);
  }
  VkMemoryRequirements req;
  vkGetBufferMemoryRequirements(device_, b->buffer, &req);
  VkMemoryAllocateInfo ai{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
  ai.allocationSize = req.size;
  ai.memoryTypeIndex = mem_type;
  r = (req.memoryTypeBits & (1u << mem_type)) ? vkAllocateMemory(device_, &ai, nullptr, &b->memory)
                                               : VK_ERROR_OUT_OF_DEVICE_MEMORY;
  if (r != VK_SUCCESS) {
    vkDestroyBuffer(device_, b->buffer, nullptr);
    delete b;
    if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY) return nullptr;
    TVM_FFI_THROW(RuntimeError) << "vkAllocateMemory(" << nbytes << " bytes) failed: "
                                << VkResultName(r);
  }
  LLAMA_VK_CALL(vkBindBufferMemory(device_, b->buffer, b->memory, 0));
  if (map) {
    void* p = nullptr;
    LLAMA_VK_CALL(vkMapMemory(device_, b->memory, 0, VK_WHOLE_SIZE, 0, &p));
    b->mapped = static_cast<uint8_t*>(p);
  }
  return b;
}

void Device::DestroyBuffer(Buffer* b) {
  if (b == nullptr) return;
  if (!g_exiting.load()) {
    if (b->mapped) vkUnmapMemory(device_, b->memory);
    vkDestroyBuffer(device_, b->buffer, nullptr);
    vkFreeMemory(device_, b->memory, nullptr);
  }
  b->magic = 0;
  delete b;
}

Buffer* Device::TakeRecycledLocked(size_t nbytes) {
  const size_t size = std::max<size_t>(16, (nbytes + 15) / 16 * 16);
  for (size_t i = recycled_.size(); i-- > 0;) {
    if (recycled_[i]->size == size) {
      Buffer* b = recycled_[i];
      recycled_.erase(recycled_.begin() + static_cast<std::ptrdiff_t>(i));
      recycled_bytes_ -= b->size;
      ++stats_.reused;
      return b;
    }
  }
  return nullptr;
}

Buffer* Device::Allocate(size_t nbytes) {
  const VkBufferUsageFlags usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT |
                                   VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                   VK_BUFFER_USAGE_TRANSFER_DST_BIT;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (Buffer* r = TakeRecycledLocked(nbytes)) return r;
    ++stats_.allocations;
  }
  Buffer* b = nullptr;
  if (mapped_type_ != UINT32_MAX) b = CreateBuffer(nbytes, usage, mapped_type_, true);
  if (b == nullptr && device_type_ != mapped_type_) {
    b = CreateBuffer(nbytes, usage, device_type_, false);  // copies use staging
  }
  if (b == nullptr) {
    // Buffers waiting for deferred destruction may be what fills the heap: wait and retry once.
    Sync();
    if (mapped_type_ != UINT32_MAX) b = CreateBuffer(nbytes, usage, mapped_type_, true);
    if (b == nullptr && device_type_ != mapped_type_) {
      b = CreateBuffer(nbytes, usage, device_type_, false);  // copies use staging
    }
  }
  if (b == nullptr) {
    TVM_FFI_THROW(RuntimeError) << "Vulkan: out of device memory allocating " << nbytes
                                << " bytes on " << info_.Name();
  }
  return b;
}

void Device::Defer(std::function<void()> fn) {
  std::unique_lock<std::mutex> lock(mu_);
  if (current_ != nullptr) {
    current_->on_complete.push_back(std::move(fn));
  } else if (!in_flight_.empty()) {
    in_flight_.back()->on_complete.push_back(std::move(fn));
  } else {
    lock.unlock();
    fn();
  }
}

void Device::Free(Buffer* buf) {
  if (buf == nullptr) return;
  // Runs with mu_ held when it runs from Recycle, or without pending work right away.
  auto keep_or_destroy = [this, buf] {
    if (buf->size <= kRecycleMax && recycled_bytes_ + buf->size <= kRecycleBudget && !g_exiting.load()) {
      recycled_.push_back(buf);
      recycled_bytes_ += buf->size;
    } else {
      DestroyBuffer(buf);
    }
  };
  std::unique_lock<std::mutex> lock(mu_);
  Batch* pending = current_ != nullptr ? current_ : (in_flight_.empty() ? nullptr : in_flight_.back());
  if (pending != nullptr) {
    pending->on_complete.push_back(std::move(keep_or_destroy));
  } else {
    keep_or_destroy();
  }
}

Batch& Device::Current() {
  if (current_ == nullptr) {
    Batch* b;
    if (!free_batches_.empty()) {
      b = free_batches_.back();
      free_batches_.pop_back();
    } else {
      b = new Batch();
      VkCommandBufferAllocateInfo ai{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
      ai.commandPool = cmd_pool_;
      ai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
      ai.commandBufferCount = 1;
      LLAMA_VK_CALL(vkAllocateCommandBuffers(device_, &ai, &b->cmd));
      VkFenceCreateInfo fi{VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
      LLAMA_VK_CALL(vkCreateFence(device_, &fi, nullptr, &b->fence));
    }
    VkCommandBufferBeginInfo bi{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
    LLAMA_VK_CALL(vkBeginCommandBuffer(b->cmd, &bi));
    if (timing_) {
      if (b->timestamps == VK_NULL_HANDLE) {
        VkQueryPoolCreateInfo qi{VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO};
        qi.queryType = VK_QUERY_TYPE_TIMESTAMP;
        qi.queryCount = 2;
        LLAMA_VK_CALL(vkCreateQueryPool(device_, &qi, nullptr, &b->timestamps));
      }
      vkCmdResetQueryPool(b->cmd, b->timestamps, 0, 2);
      vkCmdWriteTimestamp(b->cmd, VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, b->timestamps, 0);
      b->timed = true;
    }
    current_ = b;
  }
  return *current_;
}

void Device::FlushLocked() {
  if (current_ == nullptr) return;
  Batch* b = current_;
  current_ = nullptr;
  // Everything written by this batch becomes visible to the host once its fence signals.
  RecordBarrier(b->cmd, kComputeOrTransfer,
                VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
                VK_PIPELINE_STAGE_HOST_BIT, VK_ACCESS_HOST_READ_BIT);
  if (b->timed) vkCmdWriteTimestamp(b->cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, b->timestamps, 1);
  LLAMA_VK_CALL(vkEndCommandBuffer(b->cmd));
  VkSubmitInfo si{VK_STRUCTURE_TYPE_SUBMIT_INFO};
  si.commandBufferCount = 1;
  si.pCommandBuffers = &b->cmd;
  VkResult r = vkQueueSubmit(queue_, 1, &si, b->fence);
  if (r != VK_SUCCESS) {
    vkResetCommandBuffer(b->cmd, 0);
    Recycle(b);
    TVM_FFI_THROW(RuntimeError) << "vkQueueSubmit failed: " << VkResultName(r);
  }
  ++submits_;
  in_flight_.push_back(b);
  while (in_flight_.size() > kMaxInFlight) WaitOldestLocked();
}

void Device::WaitOldestLocked() {
  Batch* b = in_flight_.front();
  auto t0 = std::chrono::steady_clock::now();
  VkResult r = vkWaitForFences(device_, 1, &b->fence, VK_TRUE, UINT64_MAX);
  stats_.fence_wait_us += static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count());
  in_flight_.pop_front();
  if (r != VK_SUCCESS) {
    TVM_FFI_THROW(RuntimeError) << "Vulkan: waiting for submitted work failed: " << VkResultName(r);
  }
  Recycle(b);
}

void Device::Recycle(Batch* b) {
  if (b->timed) {
    uint64_t t[2] = {0, 0};
    if (vkGetQueryPoolResults(device_, b->timestamps, 0, 2, sizeof(t), t, sizeof(uint64_t),
                              VK_QUERY_RESULT_64_BIT) == VK_SUCCESS) {
      uint64_t mask = info_.timestamp_bits >= 64 ? ~0ull : ((1ull << info_.timestamp_bits) - 1);
      gpu_busy_ns_ += static_cast<double>((t[1] - t[0]) & mask) * info_.props.limits.timestampPeriod;
      stats_.gpu_busy_us = static_cast<uint64_t>(gpu_busy_ns_ / 1000.0);
    }
    b->timed = false;
  }
  vkResetFences(device_, 1, &b->fence);
  vkResetCommandBuffer(b->cmd, 0);
  for (VkDescriptorPool pool : b->pools) vkResetDescriptorPool(device_, pool, 0);
  b->pool_cursor = 0;
  b->ubo.Rewind();
  b->uploads.Rewind();
  b->commands = 0;
  std::vector<std::function<void()>> fns;
  fns.swap(b->on_complete);
  free_batches_.push_back(b);
  for (auto& fn : fns) fn();
}

void Device::SyncLocked() {
  if (current_ == nullptr && in_flight_.empty()) return;
  ++stats_.syncs;
  FlushLocked();
  while (!in_flight_.empty()) WaitOldestLocked();
  only_uploads_since_sync_ = true;
}

void Device::Sync() {
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
}

void Device::StreamSync() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!only_uploads_since_sync_) SyncLocked();
}

VkDescriptorSet Device::AllocSetLocked(Batch& b, VkDescriptorSetLayout layout) {
  for (;;) {
    if (b.pool_cursor == b.pools.size()) {
      VkDescriptorPoolSize sizes[2] = {
          {VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, kSetsPerPool * 16},
          {VK_DESCRIPTOR_TYPE_UNIFORM_BUFFER, kSetsPerPool},
      };
      VkDescriptorPoolCreateInfo ci{VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO};
      ci.maxSets = kSetsPerPool;
      ci.poolSizeCount = 2;
      ci.pPoolSizes = sizes;
      VkDescriptorPool pool;
      LLAMA_VK_CALL(vkCreateDescriptorPool(device_, &ci, nullptr, &pool));
      b.pools.push_back(pool);
    }
    VkDescriptorSetAllocateInfo ai{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO};
    ai.descriptorPool = b.pools[b.pool_cursor];
    ai.descriptorSetCount = 1;
    ai.pSetLayouts = &layout;
    VkDescriptorSet set;
    VkResult r = vkAllocateDescriptorSets(device_, &ai, &set);
    if (r == VK_SUCCESS) return set;
    if (r == VK_ERROR_OUT_OF_POOL_MEMORY || r == VK_ERROR_FRAGMENTED_POOL) {
      ++b.pool_cursor;
      continue;
    }
    TVM_FFI_THROW(RuntimeError) << "vkAllocateDescriptorSets failed: " << VkResultName(r);
  }
}

std::pair<Buffer*, VkDeviceSize> Device::AllocArenaLocked(HostArena& arena, VkDeviceSize nbytes,
                                                          VkDeviceSize align,
                                                          VkBufferUsageFlags usage,
                                                          VkDeviceSize chunk_bytes) {
  for (;;) {
    if (arena.chunk == arena.chunks.size()) {
      Buffer* c = CreateBuffer(std::max(chunk_bytes, nbytes), usage, host_type_, true);
      if (c == nullptr) TVM_FFI_THROW(RuntimeError) << "Vulkan: out of host-visible memory";
      arena.chunks.push_back(c);
      arena.offset = 0;
    }
    Buffer* c = arena.chunks[arena.chunk];
    VkDeviceSize off = (arena.offset + align - 1) / align * align;
    if (off + nbytes <= c->size) {
      arena.offset = off + nbytes;
      return {c, off};
    }
    ++arena.chunk;
    arena.offset = 0;
  }
}

void Device::Dispatch(const Pipeline& p,
                      const std::vector<std::pair<Buffer*, VkDeviceSize>>& buffers,
                      const void* scalars, uint32_t gx, uint32_t gy, uint32_t gz) {
  std::lock_guard<std::mutex> lock(mu_);
  auto t_record = timing_ ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point();
  Batch& b = Current();
  std::vector<VkDescriptorBufferInfo> infos(buffers.size() + (p.use_ubo ? 1 : 0));
  std::vector<VkWriteDescriptorSet> writes(infos.size());
  VkDescriptorSet set = VK_NULL_HANDLE;
  if (!infos.empty()) set = AllocSetLocked(b, p.set_layout);
  for (size_t i = 0; i < buffers.size(); ++i) {
    Buffer* buf = buffers[i].first;
    infos[i].buffer = buf->buffer;
    infos[i].offset = buffers[i].second;
    infos[i].range = VK_WHOLE_SIZE;
    if (buf->size - buffers[i].second > info_.props.limits.maxStorageBufferRange && !warned_range_) {
      warned_range_ = true;
      std::fprintf(stderr,
                   "[llama-aot vulkan] warning: a %llu-byte storage buffer exceeds "
                   "maxStorageBufferRange (%u) of %s; indices past the limit are undefined\n",
                   static_cast<unsigned long long>(buf->size),
                   info_.props.limits.maxStorageBufferRange, info_.Name().c_str());
    }
  }
  if (p.use_ubo) {
    VkDeviceSize align = std::max<VkDeviceSize>(16, info_.props.limits.minUniformBufferOffsetAlignment);
    auto [ubo, off] = AllocArenaLocked(b.ubo, std::max<uint32_t>(p.push_bytes, 16), align,
                                       VK_BUFFER_USAGE_UNIFORM_BUFFER_BIT, kUboChunk);
    std::memcpy(ubo->mapped + off, scalars, p.push_bytes);
    auto& bi = infos[buffers.size()];
    bi.buffer = ubo->buffer;
    bi.offset = off;
    bi.range = std::max<uint32_t>(p.push_bytes, 16);
  }
  for (size_t i = 0; i < infos.size(); ++i) {
    auto& w = writes[i];
    w.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET;
    w.dstSet = set;
    w.dstBinding = static_cast<uint32_t>(i);
    w.descriptorCount = 1;
    w.descriptorType = (p.use_ubo && i == buffers.size()) ? VK_DESCRIPTOR_TYPE_UNIFORM_BUFFER
                                                          : VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
    w.pBufferInfo = &infos[i];
  }
  if (!writes.empty()) {
    vkUpdateDescriptorSets(device_, static_cast<uint32_t>(writes.size()), writes.data(), 0, nullptr);
  }
  vkCmdBindPipeline(b.cmd, VK_PIPELINE_BIND_POINT_COMPUTE, p.pipeline);
  if (set != VK_NULL_HANDLE) {
    vkCmdBindDescriptorSets(b.cmd, VK_PIPELINE_BIND_POINT_COMPUTE, p.layout, 0, 1, &set, 0,
                            nullptr);
  }
  if (!p.use_ubo && p.push_bytes > 0) {
    vkCmdPushConstants(b.cmd, p.layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, p.push_bytes, scalars);
  }
  vkCmdDispatch(b.cmd, gx, gy, gz);
  only_uploads_since_sync_ = false;
  RecordBarrier(b.cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_WRITE_BIT,
                kComputeOrTransfer, kAnyComputeOrTransfer);
  ++dispatches_;
  if (timing_) {
    stats_.record_us += static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                                  std::chrono::steady_clock::now() - t_record)
                                                  .count());
  }
  if (++b.commands >= kFlushEvery) FlushLocked();
}

Buffer* Device::StagingLocked(size_t nbytes) {
  if (staging_ == nullptr || staging_->size < nbytes) {
    if (staging_ != nullptr) DestroyBuffer(staging_);  // idle: staging use always ends in a sync
    staging_ = CreateBuffer(nbytes,
                            VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT,
                            host_type_, true);
    if (staging_ == nullptr) TVM_FFI_THROW(RuntimeError) << "Vulkan: out of staging memory";
  }
  return staging_;
}

void Device::CopyHostToDevice(const void* src, Buffer* dst, size_t dst_offset, size_t nbytes) {
  if (nbytes == 0) return;
  TVM_FFI_ICHECK_LE(dst_offset + nbytes, dst->size) << "Vulkan copy out of bounds";
  std::lock_guard<std::mutex> lock(mu_);
  if (nbytes <= kRecordedUploadMax) {  // in stream order, no wait: what every step uploads
    Batch& b = Current();
    auto [chunk, off] = AllocArenaLocked(b.uploads, nbytes, 16, VK_BUFFER_USAGE_TRANSFER_SRC_BIT,
                                         kUploadChunk);
    std::memcpy(chunk->mapped + off, src, nbytes);
    VkBufferCopy region{off, dst_offset, nbytes};
    vkCmdCopyBuffer(b.cmd, chunk->buffer, dst->buffer, 1, &region);
    RecordBarrier(b.cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT,
                  kComputeOrTransfer, kAnyComputeOrTransfer);
    ++stats_.uploads_recorded;
    if (++b.commands >= kFlushEvery) FlushLocked();
    return;
  }
  ++stats_.uploads_synced;
  SyncLocked();  // recorded commands may still read or write dst
  if (dst->mapped != nullptr) {
    std::memcpy(dst->mapped + dst_offset, src, nbytes);
    return;
  }
  const uint8_t* s = static_cast<const uint8_t*>(src);
  for (size_t done = 0; done < nbytes;) {
    size_t n = std::min(nbytes - done, kStagingMax);
    Buffer* st = StagingLocked(std::min(nbytes, kStagingMax));
    std::memcpy(st->mapped, s + done, n);
    Batch& b = Current();
    VkBufferCopy region{0, dst_offset + done, n};
    vkCmdCopyBuffer(b.cmd, st->buffer, dst->buffer, 1, &region);
    RecordBarrier(b.cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT,
                  kComputeOrTransfer, kAnyComputeOrTransfer);
    SyncLocked();
    done += n;
  }
}

void Device::CopyDeviceToHost(Buffer* src, size_t src_offset, void* dst, size_t nbytes) {
  if (nbytes == 0) return;
  TVM_FFI_ICHECK_LE(src_offset + nbytes, src->size) << "Vulkan copy out of bounds";
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.downloads;
  SyncLocked();
  if (src->mapped != nullptr) {
    std::memcpy(dst, src->mapped + src_offset, nbytes);
    return;
  }
  uint8_t* d = static_cast<uint8_t*>(dst);
  for (size_t done = 0; done < nbytes;) {
    size_t n = std::min(nbytes - done, kStagingMax);
    Buffer* st = StagingLocked(std::min(nbytes, kStagingMax));
    Batch& b = Current();
    VkBufferCopy region{src_offset + done, 0, n};
    vkCmdCopyBuffer(b.cmd, src->buffer, st->buffer, 1, &region);
    SyncLocked();  // the flush barrier makes the transfer write visible to the host
    std::memcpy(d + done, st->mapped, n);
    done += n;
  }
}

void Device::CopyDeviceToDevice(Buffer* src, size_t src_offset, Buffer* dst, size_t dst_offset,
                                size_t nbytes) {
  if (nbytes == 0) return;
  TVM_FFI_ICHECK_LE(src_offset + nbytes, src->size) << "Vulkan copy out of bounds";
  TVM_FFI_ICHECK_LE(dst_offset + nbytes, dst->size) << "Vulkan copy out of bounds";
  std::lock_guard<std::mutex> lock(mu_);
  Batch& b = Current();
  VkBufferCopy region{src_offset, dst_offset, nbytes};
  vkCmdCopyBuffer(b.cmd, src->buffer, dst->buffer, 1, &region);
  only_uploads_since_sync_ = false;
  RecordBarrier(b.cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT,
                kComputeOrTransfer, kAnyComputeOrTransfer);
  if (++b.commands >= kFlushEvery) FlushLocked();
}

}  // namespace vulkan
}  // namespace llama_aot
