// llama-aot Vulkan runtime: the "vulkan" module (SPIR-V kernels) and its loader
// ffi.Module.load_from_bytes.vulkan.
//
// Payload (TVM's serialized VulkanModule, see shared/facts/vulkan-module-format.md):
//   fmt: str; fmap: u64 n, n x (str name, FunctionInfo); smap: u64 n, n x (str name, bytes shader)
//   FunctionInfo: str name; vec<DLDataType> arg_types; vec<str> launch_param_tags; vec<i32> extra
//   shader: u32 flag (bit 0: scalars in a uniform buffer; bit 1: blockIdx.x folds into x*y), u64 nwords, u32 words[nwords]
//
// Calling convention of a kernel function (what TVM's host code passes):
//   (arguments in FunctionInfo.arg_types order: buffers as device pointers, scalars as int64 /
//    float64) followed by one int64 per launch_param_tag (blockIdx.* -> grid, threadIdx.* ->
//    workgroup size, which the shader fixes), then the dynamic shared memory size when the last
//   tag is "tirx.use_dyn_shared_memory".
#include <tvm/ffi/cast.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/memory.h>
#include <tvm/ffi/string.h>

#include <array>
#include <cstring>
#include <map>
#include <sstream>
#include <unordered_map>

#include "vk_common.h"

namespace llama_aot {
namespace vulkan {

Buffer* AsBuffer(const void* ptr, const char* what);

namespace {

using tvm::ffi::AnyView;
using tvm::ffi::Bytes;
using tvm::ffi::Function;
using tvm::ffi::Module;
using tvm::ffi::ModuleObj;
using tvm::ffi::Optional;
using tvm::ffi::PackedArgs;
using tvm::ffi::String;

struct FunctionInfo {
  std::string name;
  std::vector<DLDataType> arg_types;
  std::vector<std::string> launch_param_tags;
  std::vector<int32_t> arg_extra_tags;
};

struct Shader {
  uint32_t flag = 0;
  std::vector<uint32_t> words;
};

class Reader {
 public:
  Reader(const char* data, size_t size) : p_(data), end_(data + size) {}
  void Need(size_t n) const {
    if (static_cast<size_t>(end_ - p_) < n) {
      TVM_FFI_THROW(ValueError) << "truncated Vulkan module payload (need " << n << " more bytes)";
    }
  }
  uint32_t U32() { return Scalar<uint32_t>(); }
  uint64_t U64() { return Scalar<uint64_t>(); }
  uint64_t Count(size_t elem_size) {
    uint64_t n = U64();
    if (elem_size != 0 && n > static_cast<uint64_t>(end_ - p_) / elem_size) {
      TVM_FFI_THROW(ValueError) << "corrupt Vulkan module payload (count " << n << ")";
    }
    return n;
  }
  std::string Str() {
    uint64_t n = Count(1);
    std::string s(p_, p_ + n);
    p_ += n;
    return s;
  }
  const char* pos() const { return p_; }
  void Seek(const char* p) { p_ = p; }
  size_t left() const { return static_cast<size_t>(end_ - p_); }

 private:
  /*! \brief A little-endian scalar (the payload's byte order; every host we build for is LE). */
  template <typename T>
  T Scalar() {
    Need(sizeof(T));
    T v;
    std::memcpy(&v, p_, sizeof(T));
    p_ += sizeof(T);
    return v;
  }

  const char* p_;
  const char* end_;
};

Shader ReadShaderBody(Reader& r) {
  Shader s;
  s.flag = r.U32();
  uint64_t n = r.Count(4);
  if (n < 5) TVM_FFI_THROW(ValueError) << "corrupt Vulkan module payload (empty shader)";
  s.words.resize(n);
  for (uint64_t i = 0; i < n; ++i) s.words[i] = r.U32();
  return s;
}

void ParsePayload(const std::string& payload, std::map<std::string, FunctionInfo>* fmap,
                  std::map<std::string, Shader>* smap) {
  Reader r(payload.data(), payload.size());
  std::string fmt = r.Str();
  if (fmt != "vulkan") {
    TVM_FFI_THROW(ValueError) << "Vulkan module payload has format '" << fmt << "', expected 'vulkan'";
  }
  uint64_t nf = r.Count(8);
  for (uint64_t i = 0; i < nf; ++i) {
    std::string key = r.Str();
    FunctionInfo info;
    info.name = r.Str();
    uint64_t na = r.Count(4);
    for (uint64_t k = 0; k < na; ++k) {
      uint32_t v = r.U32();
      DLDataType t;
      t.code = static_cast<uint8_t>(v & 0xff);
      t.bits = static_cast<uint8_t>((v >> 8) & 0xff);
      t.lanes = static_cast<uint16_t>(v >> 16);
      info.arg_types.push_back(t);
    }
    uint64_t nt = r.Count(8);
    for (uint64_t k = 0; k < nt; ++k) info.launch_param_tags.push_back(r.Str());
    uint64_t ne = r.Count(4);
    for (uint64_t k = 0; k < ne; ++k) info.arg_extra_tags.push_back(static_cast<int32_t>(r.U32()));
    (*fmap)[key] = std::move(info);
  }
  uint64_t ns = r.Count(8);
  for (uint64_t i = 0; i < ns; ++i) {
    std::string key = r.Str();
    // TVM >= 0.24 stores each shader as a byte blob; older versions stored it inline.
    const char* mark = r.pos();
    bool blob = false;
    if (r.left() >= 20) {
      uint64_t len = r.U64();
      const char* body = r.pos();
      r.U32();
      uint64_t nwords = r.U64();
      blob = len >= 12 && len <= r.left() + 12 && nwords <= (len - 12) / 4 &&
             len == 12 + 4 * nwords;
      r.Seek(blob ? body : mark);
    }
    (*smap)[key] = ReadShaderBody(r);
  }
  if (r.left() != 0) {
    TVM_FFI_THROW(ValueError) << "corrupt Vulkan module payload (" << r.left()
                              << " trailing bytes)";
  }
  for (auto& kv : *fmap) {
    if (!smap->count(kv.first)) {
      TVM_FFI_THROW(ValueError) << "Vulkan module: kernel '" << kv.first << "' has no shader";
    }
  }
}

// What the SPIR-V says about its GLCompute entry points.
struct SpirvEntry {
  std::string name;
  uint32_t id = 0;
  uint32_t local[3] = {0, 0, 0};  // 0: unknown (e.g. LocalSizeId)
};

std::vector<SpirvEntry> ParseSpirv(const std::vector<uint32_t>& w, const std::string& kernel) {
  if (w.size() < 5 || w[0] != 0x07230203u) {
    TVM_FFI_THROW(ValueError) << "Vulkan kernel '" << kernel << "': not a SPIR-V module";
  }
  std::vector<SpirvEntry> entries;
  std::vector<std::pair<size_t, std::array<uint32_t, 3>>> size_ids;  // LocalSizeId: entry index, constant ids
  std::unordered_map<uint32_t, uint32_t> constants;     // OpConstant / OpSpecConstant (32-bit)
  size_t i = 5;
  while (i < w.size()) {
    uint32_t count = w[i] >> 16, op = w[i] & 0xffff;
    if (count == 0 || i + count > w.size()) break;
    if (op == 15 && count >= 4 && w[i + 1] == 5 /* OpEntryPoint GLCompute */) {
      SpirvEntry e;
      e.id = w[i + 2];
      const char* s = reinterpret_cast<const char*>(&w[i + 3]);
      e.name = std::string(s, strnlen(s, (count - 3) * 4));
      entries.push_back(e);
    } else if (op == 16 && count >= 6 && w[i + 2] == 17 /* OpExecutionMode LocalSize */) {
      for (auto& e : entries) {
        if (e.id == w[i + 1]) std::copy(&w[i + 3], &w[i + 6], e.local);
      }
    } else if (op == 331 && count >= 6 && w[i + 2] == 38 /* OpExecutionModeId LocalSizeId */) {
      for (size_t k = 0; k < entries.size(); ++k) {
        if (entries[k].id == w[i + 1]) {
          size_ids.emplace_back();
          size_ids.back().first = k;
          std::copy(&w[i + 3], &w[i + 6], size_ids.back().second.begin());
        }
      }
    } else if ((op == 43 || op == 50) && count == 4 /* OpConstant / OpSpecConstant, 32-bit */) {
      constants[w[i + 2]] = w[i + 3];
    } else if (op == 54 /* OpFunction */) {
      break;  // entry points, execution modes and constants precede all functions
    }
    i += count;
  }
  for (auto& [k, ids] : size_ids) {
    bool known = constants.count(ids[0]) && constants.count(ids[1]) && constants.count(ids[2]);
    for (int d = 0; d < 3; ++d) entries[k].local[d] = known ? constants[ids[d]] : 0;
  }
  return entries;
}

class VulkanModuleObj;

/*! \brief One kernel's calling convention, prepared once per GetFunction. */
struct KernelSpec {
  std::string name;
  std::string entry = "main";
  std::vector<int> buffer_args;                        // argument indices, binding order
  std::vector<std::pair<int, DLDataType>> scalar_args;  // argument indices, push-constant order
  size_t num_args = 0;
  std::vector<int> launch_dims;  // per launch value: 0..2 grid x/y/z, 3..5 workgroup x/y/z
  bool dyn_shmem = false;
  uint32_t local[3] = {0, 0, 0};
  bool use_ubo = false;
  bool folded_grid = false;  // shader flag bit 1 (targets/backends/vulkan/module_format.py)
};

class VulkanModuleObj : public ModuleObj {
 public:
  VulkanModuleObj(std::string payload, std::map<std::string, FunctionInfo> fmap,
                  std::map<std::string, Shader> smap)
      : payload_(std::move(payload)), fmap_(std::move(fmap)), smap_(std::move(smap)) {}

  ~VulkanModuleObj() {
    if (g_exiting.load()) return;
    for (auto& kv : pipelines_) {
      int dev_id = kv.first.first;
      std::shared_ptr<Pipeline> p = kv.second;
      try {
        Device& d = Runtime::Global()->Get(dev_id);
        VkDevice dev = d.handle();
        d.Defer([dev, p] {
          if (g_exiting.load()) return;
          vkDestroyPipeline(dev, p->pipeline, nullptr);
          vkDestroyPipelineLayout(dev, p->layout, nullptr);
          vkDestroyDescriptorSetLayout(dev, p->set_layout, nullptr);
          vkDestroyShaderModule(dev, p->shader, nullptr);
        });
      } catch (...) {
      }
    }
  }

  const char* kind() const final { return "vulkan"; }
  int GetPropertyMask() const final {
    return Module::kBinarySerializable | Module::kRunnable;
  }
  Bytes SaveToBytes() const final { return Bytes(payload_); }

  String InspectSource(const String& format) const final {
    std::ostringstream os;
    for (auto& kv : fmap_) {
      const Shader& sh = smap_.at(kv.first);
      os << kv.first << "(";
      for (size_t i = 0; i < kv.second.arg_types.size(); ++i) {
        os << (i ? ", " : "") << tvm::ffi::DLDataTypeToString(kv.second.arg_types[i]);
      }
      os << ") launch[";
      for (size_t i = 0; i < kv.second.launch_param_tags.size(); ++i) {
        os << (i ? ", " : "") << kv.second.launch_param_tags[i];
      }
      os << "] spirv_words=" << sh.words.size() << " flag=" << sh.flag << "\n";
    }
    return os.str();
  }

  Optional<Function> GetFunction(const String& name) final;

  std::shared_ptr<Pipeline> GetPipeline(int device_id, const KernelSpec& spec);

 private:
  std::string payload_;
  std::map<std::string, FunctionInfo> fmap_;
  std::map<std::string, Shader> smap_;
  std::mutex mu_;
  std::map<std::pair<int, std::string>, std::shared_ptr<Pipeline>> pipelines_;
};

std::pair<Buffer*, VkDeviceSize> ResolveBuffer(const AnyView& a, const KernelSpec& spec,
                                               int index) {
  int ti = a.type_index();
  if (ti == kTVMFFIOpaquePtr) {
    return {AsBuffer(a.cast<void*>(), "a kernel buffer argument"), 0};
  }
  if (ti == kTVMFFINone) {
    TVM_FFI_THROW(RuntimeError) << "Vulkan kernel '" << spec.name << "': buffer argument " << index
                                << " is null";
  }
  if (auto t = a.try_cast<DLTensor*>()) {
    DLTensor* tensor = *t;
    if (tensor->device.device_type != kDLVulkan) {
      TVM_FFI_THROW(RuntimeError) << "Vulkan kernel '" << spec.name << "': argument " << index
                                  << " is a tensor on device type "
                                  << static_cast<int>(tensor->device.device_type);
    }
    return {AsBuffer(tensor->data, "a kernel tensor argument"), tensor->byte_offset};
  }
  TVM_FFI_THROW(RuntimeError) << "Vulkan kernel '" << spec.name << "': argument " << index
                              << " must be a device buffer, got " << a.GetTypeKey();
  return {nullptr, 0};
}

uint64_t PackScalar(const AnyView& a, DLDataType t, const KernelSpec& spec, int index) {
  uint64_t out = 0;
  if (t.lanes != 1) {
    TVM_FFI_THROW(RuntimeError) << "Vulkan kernel '" << spec.name << "': vector scalar argument "
                                << index << " is not supported";
  }
  switch (t.code) {
    case kDLInt:
    case kDLUInt:
    case kDLBool: {
      int64_t v = a.cast<int64_t>();
      if (t.bits == 64) {
        std::memcpy(&out, &v, 8);
      } else {
        uint32_t lo = static_cast<uint32_t>(v);  // int32 / uint32 / bool in the low word
        out = lo;
      }
      return out;
    }
    case kDLFloat: {
      double v = a.cast<double>();
      if (t.bits == 64) {
        std::memcpy(&out, &v, 8);
      } else if (t.bits == 32) {
        float f = static_cast<float>(v);
        uint32_t lo;
        std::memcpy(&lo, &f, 4);
        out = lo;
      } else {
        TVM_FFI_THROW(RuntimeError) << "Vulkan kernel '" << spec.name << "': float" << int(t.bits)
                                    << " scalar arguments are not supported";
      }
      return out;
    }
    default:
      TVM_FFI_THROW(RuntimeError) << "Vulkan kernel '" << spec.name << "': scalar argument "
                                  << index << " has unsupported type code " << int(t.code);
  }
  return out;
}

std::shared_ptr<Pipeline> VulkanModuleObj::GetPipeline(int device_id, const KernelSpec& spec) {
  std::lock_guard<std::mutex> lock(mu_);
  auto key = std::make_pair(device_id, spec.name);
  auto it = pipelines_.find(key);
  if (it != pipelines_.end()) return it->second;

  Device& d = Runtime::Global()->Get(device_id);
  VkDevice dev = d.handle();
  const Shader& sh = smap_.at(spec.name);
  const auto& lim = d.info().props.limits;
  auto p = std::make_shared<Pipeline>();
  p->num_buffers = static_cast<uint32_t>(spec.buffer_args.size());
  p->push_bytes = static_cast<uint32_t>(spec.scalar_args.size() * 8);
  p->use_ubo = spec.use_ubo;
  if (!p->use_ubo && p->push_bytes > lim.maxPushConstantsSize) {
    TVM_FFI_THROW(RuntimeError) << "Vulkan kernel '" << spec.name << "' passes " << p->push_bytes
                                << " bytes of push constants; " << d.info().Name() << " allows "
                                << lim.maxPushConstantsSize;
  }
  if (p->num_buffers + (p->use_ubo ? 1 : 0) > lim.maxPerStageDescriptorStorageBuffers + 1) {
    TVM_FFI_THROW(RuntimeError) << "Vulkan kernel '" << spec.name << "' binds " << p->num_buffers
                                << " storage buffers; " << d.info().Name() << " allows "
                                << lim.maxPerStageDescriptorStorageBuffers;
  }
  for (int i = 0; i < 3; ++i) {
    if (spec.local[i] > lim.maxComputeWorkGroupSize[i]) {
      TVM_FFI_THROW(RuntimeError) << "Vulkan kernel '" << spec.name << "': workgroup size "
                                  << spec.local[0] << "x" << spec.local[1] << "x" << spec.local[2]
                                  << " exceeds the limits of " << d.info().Name();
    }
  }
  if (spec.local[0] * spec.local[1] * spec.local[2] > lim.maxComputeWorkGroupInvocations) {
    TVM_FFI_THROW(RuntimeError) << "Vulkan kernel '" << spec.name << "': "
                                << spec.local[0] * spec.local[1] * spec.local[2]
                                << " invocations per workgroup exceed the device limit "
                                << lim.maxComputeWorkGroupInvocations;
  }
  // Everything created below is destroyed on failure.
  struct Guard {
    VkDevice dev;
    Pipeline* p;
    bool ok = false;
    ~Guard() {
      if (ok) return;
      if (p->pipeline) vkDestroyPipeline(dev, p->pipeline, nullptr);
      if (p->layout) vkDestroyPipelineLayout(dev, p->layout, nullptr);
      if (p->set_layout) vkDestroyDescriptorSetLayout(dev, p->set_layout, nullptr);
      if (p->shader) vkDestroyShaderModule(dev, p->shader, nullptr);
    }
  } guard{dev, p.get()};

  VkShaderModuleCreateInfo smi{VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO};
  smi.codeSize = sh.words.size() * 4;
  smi.pCode = sh.words.data();
  LLAMA_VK_CALL(vkCreateShaderModule(dev, &smi, nullptr, &p->shader));

  std::vector<VkDescriptorSetLayoutBinding> bindings;
  for (uint32_t i = 0; i < p->num_buffers + (p->use_ubo ? 1u : 0u); ++i) {
    VkDescriptorSetLayoutBinding b{};
    b.binding = i;
    b.descriptorType = i < p->num_buffers ? VK_DESCRIPTOR_TYPE_STORAGE_BUFFER
                                          : VK_DESCRIPTOR_TYPE_UNIFORM_BUFFER;
    b.descriptorCount = 1;
    b.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT;
    bindings.push_back(b);
  }
  VkDescriptorSetLayoutCreateInfo dli{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO};
  dli.bindingCount = static_cast<uint32_t>(bindings.size());
  dli.pBindings = bindings.data();
  LLAMA_VK_CALL(vkCreateDescriptorSetLayout(dev, &dli, nullptr, &p->set_layout));

  VkPushConstantRange range{VK_SHADER_STAGE_COMPUTE_BIT, 0, p->push_bytes};
  VkPipelineLayoutCreateInfo pli{VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO};
  pli.setLayoutCount = 1;
  pli.pSetLayouts = &p->set_layout;
  if (!p->use_ubo && p->push_bytes > 0) {
    pli.pushConstantRangeCount = 1;
    pli.pPushConstantRanges = &range;
  }
  LLAMA_VK_CALL(vkCreatePipelineLayout(dev, &pli, nullptr, &p->layout));

  VkComputePipelineCreateInfo cpi{VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO};
  cpi.stage.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO;
  cpi.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
  cpi.stage.module = p->shader;
  cpi.stage.pName = spec.entry.c_str();
  cpi.layout = p->layout;
  VkResult r = vkCreateComputePipelines(dev, d.pipeline_cache(), 1, &cpi, nullptr, &p->pipeline);
  if (r != VK_SUCCESS) {
    p->pipeline = VK_NULL_HANDLE;
    TVM_FFI_THROW(RuntimeError) << "Vulkan: creating the pipeline of kernel '" << spec.name
                                << "' failed: " << VkResultName(r);
  }
  guard.ok = true;
  pipelines_[key] = p;
  return p;
}

Optional<Function> VulkanModuleObj::GetFunction(const String& name) {
  if (name == "__llama_aot_vulkan_payload") {
    std::string payload = payload_;
    return Function::FromTyped([payload]() { return Bytes(payload); });
  }
  if (name == "__llama_aot_vulkan_metadata") {
    return Function::FromTyped([]() { return String(""); });
  }
  auto it = fmap_.find(std::string(name));
  if (it == fmap_.end()) return std::nullopt;
  const FunctionInfo& info = it->second;
  auto spec = std::make_shared<KernelSpec>();
  spec->name = it->first;
  spec->num_args = info.arg_types.size();
  for (size_t i = 0; i < info.arg_types.size(); ++i) {
    if (info.arg_types[i].code == kDLOpaqueHandle) {
      spec->buffer_args.push_back(static_cast<int>(i));
    } else {
      spec->scalar_args.emplace_back(static_cast<int>(i), info.arg_types[i]);
    }
  }
  for (size_t i = 0; i < info.launch_param_tags.size(); ++i) {
    const std::string& tag = info.launch_param_tags[i];
    if (tag == "tirx.use_dyn_shared_memory" || tag == "tir.use_dyn_shared_memory") {
      spec->dyn_shmem = true;
    } else if (tag.rfind("blockIdx.", 0) == 0 && tag.size() == 10) {
      spec->launch_dims.push_back(tag[9] - 'x');
    } else if (tag.rfind("threadIdx.", 0) == 0 && tag.size() == 11) {
      spec->launch_dims.push_back(3 + (tag[10] - 'x'));
    } else {
      TVM_FFI_THROW(RuntimeError) << "Vulkan kernel '" << spec->name
                                  << "': unsupported launch parameter '" << tag << "'";
    }
  }
  const Shader& sh = smap_.at(spec->name);
  spec->use_ubo = (sh.flag & 1u) != 0;
  spec->folded_grid = (sh.flag & 2u) != 0;
  std::vector<SpirvEntry> entries = ParseSpirv(sh.words, spec->name);
  if (entries.empty()) {
    TVM_FFI_THROW(RuntimeError) << "Vulkan kernel '" << spec->name
                                << "': SPIR-V has no GLCompute entry point";
  }
  const SpirvEntry* e = &entries[0];
  for (auto& cand : entries) {
    if (cand.name == spec->name) e = &cand;
  }
  spec->entry = e->name;
  std::copy(e->local, e->local + 3, spec->local);

  tvm::ffi::ObjectPtr<VulkanModuleObj> self = tvm::ffi::GetObjectPtr<VulkanModuleObj>(this);
  return Function::FromPacked([self, spec](PackedArgs args, tvm::ffi::Any* rv) {
    const KernelSpec& k = *spec;
    const size_t nlaunch = k.launch_dims.size() + (k.dyn_shmem ? 1 : 0);
    if (static_cast<size_t>(args.size()) < k.num_args + nlaunch) {
      TVM_FFI_THROW(RuntimeError) << "Vulkan kernel '" << k.name << "' expects " << k.num_args
                                  << " arguments and " << nlaunch << " launch values, got "
                                  << args.size();
    }
    std::vector<std::pair<Buffer*, VkDeviceSize>> bufs;
    bufs.reserve(k.buffer_args.size());
    for (int i : k.buffer_args) bufs.push_back(ResolveBuffer(args[i], k, i));
    int device_id = bufs.empty() ? ActiveDeviceId() : bufs[0].first->device_id;
    for (auto& b : bufs) {
      if (b.first->device_id != device_id) {
        TVM_FFI_THROW(RuntimeError) << "Vulkan kernel '" << k.name
                                    << "': buffers live on different devices";
      }
    }
    std::vector<uint64_t> scalars(k.scalar_args.size());
    for (size_t s = 0; s < k.scalar_args.size(); ++s) {
      scalars[s] = PackScalar(args[k.scalar_args[s].first], k.scalar_args[s].second, k,
                              k.scalar_args[s].first);
    }
    uint64_t dims[6] = {1, 1, 1, 1, 1, 1};
    for (size_t i = 0; i < k.launch_dims.size(); ++i) {
      int64_t v = args[k.num_args + i].cast<int64_t>();
      if (v > 0) dims[k.launch_dims[i]] = static_cast<uint64_t>(v);  // 0-sized dims launch 1
    }
    for (int i = 0; i < 3; ++i) {
      if (k.local[i] != 0 && dims[3 + i] != k.local[i]) {
        TVM_FFI_THROW(RuntimeError) << "Vulkan kernel '" << k.name << "': launched with threadIdx "
                                    << dims[3] << "x" << dims[4] << "x" << dims[5]
                                    << " but the shader's workgroup size is " << k.local[0] << "x"
                                    << k.local[1] << "x" << k.local[2];
      }
    }
    Device& d = Runtime::Global()->Get(device_id);
    const auto& lim = d.info().props.limits;
    if (k.folded_grid && dims[1] == 1 && dims[0] > lim.maxComputeWorkGroupCount[0]) {
      // the shader linearizes (x, y) and skips the groups past the end (FLAG_FOLDED_GRID)
      uint64_t y = (dims[0] + lim.maxComputeWorkGroupCount[0] - 1) / lim.maxComputeWorkGroupCount[0];
      dims[1] = y;
      dims[0] = (dims[0] + y - 1) / y;
    }
    for (int i = 0; i < 3; ++i) {
      if (dims[i] > lim.maxComputeWorkGroupCount[i]) {
        TVM_FFI_THROW(RuntimeError) << "Vulkan kernel '" << k.name << "': grid " << dims[0] << "x"
                                    << dims[1] << "x" << dims[2]
                                    << " exceeds maxComputeWorkGroupCount of " << d.info().Name();
      }
    }
    for (auto& b : bufs) {
      if (b.second % lim.minStorageBufferOffsetAlignment != 0) {
        TVM_FFI_THROW(RuntimeError) << "Vulkan kernel '" << k.name << "': tensor byte_offset "
                                    << b.second << " is not a multiple of "
                                    << lim.minStorageBufferOffsetAlignment;
      }
    }
    std::shared_ptr<Pipeline> p =
        static_cast<VulkanModuleObj*>(self.get())->GetPipeline(device_id, k);
    d.Dispatch(*p, bufs, scalars.data(), static_cast<uint32_t>(dims[0]),
               static_cast<uint32_t>(dims[1]), static_cast<uint32_t>(dims[2]));
  });
}

Module LoadFromBytes(const Bytes& bytes) {
  std::string payload(bytes.data(), bytes.size());
  std::map<std::string, FunctionInfo> fmap;
  std::map<std::string, Shader> smap;
  ParsePayload(payload, &fmap, &smap);
  return Module(tvm::ffi::make_object<VulkanModuleObj>(std::move(payload), std::move(fmap),
                                                       std::move(smap)));
}

}  // namespace
}  // namespace vulkan
}  // namespace llama_aot

TVM_FFI_STATIC_INIT_BLOCK() {
  using tvm::ffi::Function;
  // override=true: replaces the SPIR-V-only stand-in of targets.backends.vulkan if it came first.
  Function::SetGlobal("ffi.Module.load_from_bytes.vulkan",
                      Function::FromTyped(llama_aot::vulkan::LoadFromBytes), true);
  Function::SetGlobal("llama_aot.vulkan.module_from_bytes",
                      Function::FromTyped(llama_aot::vulkan::LoadFromBytes), true);
}
