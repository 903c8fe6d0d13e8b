/*
 * llama-aot runtime: the C API (include/llama_aot.h) on top of TVM's Relax VM and paged KV cache.
 *
 * The calling convention mirrors runtime_stubs/engine.py (the Python host engine):
 *   vm      = load(library).vm_load_executable(); vm.vm_initialization(device, cpu host)
 *   params  = tensors over the mmap'ed shard files, in manifest order, passed as one tuple
 *   cache_i = vm[create_kv_cache[i]](...)   -- see CreateKVCache: the ONE place for its arguments
 *   kv_state_add_sequence(cache_i, 0)
 *   forward = kv_state_begin_forward(cache_i, [0], [n]) for all i;
 *             embeds = embed(ids int32[n], params)            ([n, H] is viewed as [1, n, H])
 *             logits = prefill|decode(embeds, cache_0..cache_{G-1}, params)   -> float32 [.., V]
 *             kv_state_end_forward(cache_i) for all i
 */
#include "llama_aot.h"

#include <dlfcn.h>
#include <unistd.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/runtime/device_api.h>
#include <tvm/runtime/tensor.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "package.h"

namespace ffi = tvm::ffi;
using llama_aot::MappedFile;
using llama_aot::PackageConfig;
using llama_aot::StatusError;

struct llama_aot_model {
  PackageConfig cfg;
  DLDevice device{kDLCPU, 0};
  ffi::Optional<ffi::Module> lib;  // Optional: ffi::Module has no empty state
  ffi::Optional<ffi::Module> vm;
  ffi::Function f_embed, f_prefill, f_decode;
  ffi::Function f_add_seq, f_remove_seq, f_begin, f_end, f_enable_window;
  std::vector<ffi::Any> caches;
  ffi::Array<ffi::Tensor> params;
  std::vector<std::shared_ptr<MappedFile>> shards;  // kept alive by the tensors as well
  int64_t seq_len = 0;
  int64_t vocab_size = -1;
  std::string device_info;  // llama_aot_device_info's JSON, built on first request
  std::atomic<bool> cancel{false};  // llama_aot_cancel -> the running llama_aot_generate stops
};

namespace {

thread_local std::string g_last_error;

int Fail(int status, const std::string& msg) {
  g_last_error = msg;
  return status;
}

/*! \brief Run `body`, turning exceptions into a status code + llama_aot_last_error(). */
template <typename F>
int Guard(const char* what, F&& body) {
  try {
    body();
    return LLAMA_AOT_OK;
  } catch (const StatusError& e) {
    return Fail(e.status, std::string(what) + ": " + e.what());
  } catch (const std::exception& e) {
    return Fail(LLAMA_AOT_ERR_RUNTIME, std::string(what) + ": " + e.what());
  } catch (...) {
    return Fail(LLAMA_AOT_ERR_RUNTIME, std::string(what) + ": unknown C++ exception");
  }
}

DLDevice ParseDevice(const char* spec) {
  std::string s = spec ? spec : "cpu";
  int id = 0;
  auto colon = s.find(':');
  std::string kind = s.substr(0, colon);
  if (colon != std::string::npos) {
    try {
      id = std::stoi(s.substr(colon + 1));
    } catch (...) {
      throw StatusError(LLAMA_AOT_ERR_INVALID_ARGUMENT, "bad device index in \"" + s + "\"");
    }
  }
  static const std::pair<const char*, DLDeviceType> kinds[] = {
      {"cpu", kDLCPU},       {"llvm", kDLCPU},     {"opencl", kDLOpenCL}, {"vulkan", kDLVulkan},
      {"metal", kDLMetal},   {"cuda", kDLCUDA},    {"rocm", kDLROCM},     {"hexagon", kDLHexagon}};
  for (const auto& k : kinds) {
    if (kind == k.first) return DLDevice{k.second, id};
  }
  throw StatusError(LLAMA_AOT_ERR_INVALID_ARGUMENT,
                    "unknown device \"" + s + "\" (expected cpu, opencl, vulkan, metal, cuda[:N])");
}

/*!
 * \brief A non-CPU device must have its device API compiled in (device_api.<kind>, e.g. the Vulkan
 *  one with -DLLAMA_AOT_WITH_VULKAN=ON) and must exist (a driver, a device at that index).
 */
void CheckDevice(DLDevice dev) {
  std::string kind = tvm::runtime::DLDeviceType2Str(dev.device_type);
  std::string api = "device_api." + kind;
  if (!ffi::Function::GetGlobal(api).has_value()) {
    std::string how = dev.device_type == kDLVulkan
                          ? "configure runtime_stubs/native with -DLLAMA_AOT_WITH_VULKAN=ON "
                            "(native_build --vulkan on) where the target has libvulkan"
                          : "link the device's runtime sources to use it";
    throw StatusError(LLAMA_AOT_ERR_UNSUPPORTED,
                      "this runtime was built without " + api + " (" + how + ")");
  }
  ffi::Any exist;
  tvm::runtime::DeviceAPI::Get(dev)->GetAttr(dev, tvm::runtime::kExist, &exist);
  if (exist == nullptr || exist.cast<int64_t>() == 0) {
    std::string why;
    if (dev.device_type == kDLVulkan) {
      // the Vulkan runtime says why (no ICD, LLAMA_AOT_VULKAN_DEVICE matches nothing, ...)
      if (auto f = ffi::Function::GetGlobal("llama_aot.vulkan.init_error")) {
        why = (*f)().cast<ffi::String>();
      }
      if (why.empty()) {
        auto count = ffi::Function::GetGlobal("llama_aot.vulkan.device_count");
        why = "the runtime sees " +
              (count ? std::to_string((*count)().cast<int64_t>()) : std::string("no")) +
              " Vulkan device(s) (LLAMA_AOT_VULKAN_DEVICE picks which one is vulkan:0)";
      }
    }
    throw StatusError(LLAMA_AOT_ERR_UNSUPPORTED, "no " + kind + " device " +
                                                    std::to_string(dev.device_id) +
                                                    (why.empty() ? "" : ": " + why));
  }
}

/*!
 * \brief Make the symbols of the library holding this code globally visible, so that a model .so
 *  dlopen'ed later resolves its undefined TVMFFI* references against us even when we were loaded
 *  with RTLD_LOCAL (JNI's System.loadLibrary, Python ctypes).  Best effort: on glibc an RTLD_NOLOAD
 *  re-open with RTLD_GLOBAL promotes the already loaded object; when the runtime is linked into the
 *  executable (exported with -rdynamic) there is nothing to do.  Android: see docs/runtime.md.
 */
void PromoteSelfToGlobal() {
  static std::once_flag once;
  std::call_once(once, [] {
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&PromoteSelfToGlobal), &info) == 0 || !info.dli_fname) return;
    void* h = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL);
    (void)h;  // keep the extra reference: the runtime must outlive every model library
  });
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    if (static_cast<unsigned char>(ch) >= 0x20) out += ch;
  }
  return out + "\"";
}

/*! \brief {"device": "kind:id", ...}: the Vulkan runtime's device_info map when it has one. */
std::string DeviceInfoJson(DLDevice dev) {
  std::string kind = "cpu";
  for (const auto& k : {std::pair<const char*, DLDeviceType>{"opencl", kDLOpenCL},
                        {"vulkan", kDLVulkan}, {"metal", kDLMetal}, {"cuda", kDLCUDA}}) {
    if (k.second == dev.device_type) kind = k.first;
  }
  std::string out = "{\"device\": " + JsonString(kind + ":" + std::to_string(dev.device_id));
  auto info = dev.device_type == kDLVulkan ? ffi::Function::GetGlobal("llama_aot.vulkan.device_info")
                                           : ffi::Optional<ffi::Function>();
  if (info.has_value()) {
    auto map = (*info)(static_cast<int64_t>(dev.device_id)).cast<ffi::Map<ffi::String, ffi::Any>>();
    for (const auto& kv : map) {
      out += ", " + JsonString(std::string(kv.first)) + ": ";
      const ffi::Any& v = kv.second;
      if (v.type_index() == kTVMFFIBool) {
        out += v.cast<bool>() ? "true" : "false";
      } else if (auto i = v.try_cast<int64_t>(); i.has_value()) {
        out += std::to_string(*i);
      } else if (auto s = v.try_cast<ffi::String>(); s.has_value()) {
        out += JsonString(std::string(*s));
      } else {
        out += "null";
      }
    }
  }
  return out + "}";
}

ffi::Tensor ParamTensor(llama_aot_model* m, const llama_aot::ParamEntry& p,
                        std::vector<std::pair<std::string, std::shared_ptr<MappedFile>>>* open) {
  DLDataType dtype;
  try {
    dtype = ffi::StringToDLDataType(p.dtype);
  } catch (const std::exception&) {
    throw StatusError(LLAMA_AOT_ERR_FORMAT, "parameter " + p.name + ": unknown dtype " + p.dtype);
  }
  int64_t numel = 1;
  for (int64_t d : p.shape) {
    if (d < 0) throw StatusError(LLAMA_AOT_ERR_FORMAT, "parameter " + p.name + ": negative dim");
    numel *= d;
  }
  uint64_t expect = static_cast<uint64_t>((numel * dtype.bits * dtype.lanes + 7) / 8);
  if (expect != p.nbytes) {
    throw StatusError(LLAMA_AOT_ERR_FORMAT, "parameter " + p.name + ": nbytes " +
                                                std::to_string(p.nbytes) + " != shape x dtype (" +
                                                std::to_string(expect) + ")");
  }
  // params_manifest's directory holds the shard files
  std::string manifest_dir = llama_aot::JoinPath(m->cfg.package_dir, m->cfg.params_manifest);
  manifest_dir = manifest_dir.substr(0, manifest_dir.find_last_of('/'));
  std::string path = llama_aot::JoinPath(manifest_dir, p.file);
  std::shared_ptr<MappedFile> file;
  for (auto& kv : *open) {
    if (kv.first == path) file = kv.second;
  }
  if (!file) {
    file = MappedFile::Open(path);
    open->emplace_back(path, file);
    m->shards.push_back(file);
  }
  if (p.offset > file->size() || p.nbytes > file->size() - p.offset) {
    throw StatusError(LLAMA_AOT_ERR_IO, "weight shard " + path + " is truncated (parameter " +
                                            p.name + " needs bytes up to " +
                                            std::to_string(p.offset + p.nbytes) + ")");
  }
  const uint8_t* src = file->data() + p.offset;
  ffi::Shape shape(p.shape);
  bool aligned = reinterpret_cast<uintptr_t>(src) % tvm::runtime::kAllocAlignment == 0;
  if (m->device.device_type == kDLCPU && aligned) {
    // Zero copy: the tensor aliases the read-only mapping and keeps the file mapped.
    struct MappedAlloc {
      std::shared_ptr<MappedFile> file;
      const uint8_t* ptr;
      void AllocData(DLTensor* t) { t->data = const_cast<uint8_t*>(ptr); }
      void FreeData(DLTensor*) {}
    };
    return ffi::Tensor::FromNDAlloc(MappedAlloc{file, src}, shape, dtype, m->device);
  }
  tvm::runtime::Tensor t = tvm::runtime::Tensor::Empty(shape, dtype, m->device);
  t.CopyFromBytes(src, p.nbytes);
  return t;
}

/*!
 * \brief The KV-cache constructor call: the ONE place that knows its argument list.
 *  create_paged_kv_cache_g(max_batch_size, max_total_seq_len, prefill_chunk_size, page_size,
 *  support_sliding_window), each an nn `int` spec, i.e. a 1-element ShapeTuple at run time.  A sliding
 *  cache holds its window, a chunk being appended and a partial page at each end
 *  (runtime_stubs/attention_window.py AttentionWindow.cache_tokens); a full one the context window.
 */
ffi::Any CreateKVCache(const ffi::Function& create, const PackageConfig& c, bool windowed) {
  const int64_t max_batch_size = 1;
  const int64_t tokens = windowed ? c.cache_window + c.prefill_chunk + 2 * c.page_size : c.context_window;
  return create(ffi::Shape({max_batch_size}), ffi::Shape({tokens}), ffi::Shape({c.prefill_chunk}),
                ffi::Shape({c.page_size}), ffi::Shape({windowed ? 1 : 0}));
}

/*! \brief Whether the sequence is bounded by the context window (not when every layer slides). */
bool Bounded(const llama_aot_model* m) { return !m->cfg.window_every_layer; }

ffi::Function VMFunction(llama_aot_model* m, const std::string& name) {
  ffi::Optional<ffi::Function> f = m->vm.value()->GetFunction(name);
  if (!f.has_value()) {
    throw StatusError(LLAMA_AOT_ERR_FORMAT, "the model library has no function \"" + name +
                                                "\" named in llama-aot.json");
  }
  return *f;
}

void AddSequence(llama_aot_model* m) {
  for (size_t i = 0; i < m->caches.size(); ++i) {
    m->f_add_seq(m->caches[i], 0);
    if (m->cfg.kv_cache_windowed[i]) m->f_enable_window(m->caches[i], 0, m->cfg.cache_window, m->cfg.attention_sinks);
  }
  m->seq_len = 0;
}

void ResetSequence(llama_aot_model* m) {
  for (const ffi::Any& c : m->caches) m->f_remove_seq(c, 0);
  AddSequence(m);
}

/*! \brief One forward pass over n <= prefill_chunk tokens; writes the last row of logits. */
void Forward(llama_aot_model* m, const ffi::Function& fn, const int32_t* ids, int64_t n,
             float* logits_out) {
  const ffi::Shape seq_ids({0});
  const ffi::Shape lengths({n});
  bool begun = true;  // from the first begin_forward on, a failure must close the step
  try {
    for (const ffi::Any& c : m->caches) m->f_begin(c, seq_ids, lengths);
    tvm::runtime::Tensor ids_t =
        tvm::runtime::Tensor::Empty(ffi::Shape({n}), DLDataType{kDLInt, 32, 1}, m->device);
    ids_t.CopyFromBytes(ids, sizeof(int32_t) * static_cast<size_t>(n));
    tvm::runtime::Tensor embeds = m->f_embed(ids_t, m->params).cast<ffi::Tensor>();
    if (embeds->ndim == 2) {  // [n, H] -> [1, n, H]
      embeds = embeds.CreateView(ffi::Shape({1, embeds->shape[0], embeds->shape[1]}),
                                 embeds->dtype);
    }
    std::vector<ffi::AnyView> args;
    args.reserve(m->caches.size() + 3);
    args.emplace_back(embeds);
    tvm::runtime::Tensor positions;  // a windowed model rotates q/k itself, at the tokens' sequence positions
    if (m->cfg.sliding_window > 0) {
      std::vector<int32_t> pos(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) pos[static_cast<size_t>(i)] = static_cast<int32_t>(m->seq_len + i);
      positions = tvm::runtime::Tensor::Empty(ffi::Shape({n}), DLDataType{kDLInt, 32, 1}, m->device);
      positions.CopyFromBytes(pos.data(), sizeof(int32_t) * pos.size());
      args.emplace_back(positions);
    }
    for (const ffi::Any& c : m->caches) args.emplace_back(c);
    args.emplace_back(m->params);
    ffi::Any rv;
    fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &rv);
    tvm::runtime::Tensor logits = rv.cast<ffi::Tensor>();
    for (const ffi::Any& c : m->caches) m->f_end(c);
    begun = false;
    m->seq_len += n;

    if (logits->ndim < 1 || logits->dtype.code != kDLFloat || logits->dtype.bits != 32 ||
        logits->dtype.lanes != 1) {
      throw StatusError(LLAMA_AOT_ERR_FORMAT, "the model returned logits of dtype " +
                                                  std::string(ffi::DLDataTypeToString(logits->dtype)) +
                                                  "; the runtime expects float32 [..., vocab]");
    }
    int64_t vocab = logits->shape[logits->ndim - 1];
    if (m->vocab_size < 0) m->vocab_size = vocab;
    if (vocab != m->vocab_size) {
      throw StatusError(LLAMA_AOT_ERR_FORMAT, "logits have " + std::to_string(vocab) +
                                                  " entries, llama-aot.json says vocab_size " +
                                                  std::to_string(m->vocab_size));
    }
    if (logits_out != nullptr) {
      int64_t numel = 1;
      for (int i = 0; i < logits->ndim; ++i) numel *= logits->shape[i];
      std::vector<float> tmp;
      float* dst = logits_out;
      if (numel != vocab) {  // several rows: keep the last one
        tmp.resize(static_cast<size_t>(numel));
        dst = tmp.data();
      }
      tvm::runtime::Tensor::CopyToBytes(logits.operator->(), dst, sizeof(float) * static_cast<size_t>(numel));
      if (numel != vocab) std::memcpy(logits_out, tmp.data() + (numel - vocab), sizeof(float) * vocab);
    }
  } catch (const std::exception& e) {
    if (!begun) throw;
    // The caches are mid-forward: close the step and drop the sequence so the handle stays
    // usable; the caller starts again from an empty sequence.
    for (const ffi::Any& c : m->caches) {
      try {
        m->f_end(c);
      } catch (...) {
      }
    }
    try {
      ResetSequence(m);
    } catch (...) {
    }
    const StatusError* se = dynamic_cast<const StatusError*>(&e);
    throw StatusError(se ? se->status : LLAMA_AOT_ERR_RUNTIME,
                      std::string(e.what()) + " (the sequence was reset to empty)");
  }
}

}  // namespace

extern "C" {

int llama_aot_open(const char* package_dir, const char* device, llama_aot_model** out) {
  if (out == nullptr || package_dir == nullptr) {
    return Fail(LLAMA_AOT_ERR_INVALID_ARGUMENT, "llama_aot_open: package_dir and out must not be NULL");
  }
  *out = nullptr;
  std::unique_ptr<llama_aot_model> m(new llama_aot_model());
  int rc = Guard("llama_aot_open", [&] {
    m->cfg = llama_aot::ReadPackage(package_dir);
    llama_aot::VerifyPackage(package_dir, m->cfg.system_lib);  // before any of its code or weights is loaded
    llama_aot::CheckHostCpu(m->cfg);  // before its code can fault on an instruction this CPU lacks
    // NULL / "" / "auto": the device the package was compiled for (target.device; a package
    // without one, e.g. a hand-made one, is a CPU package)
    const std::string package_device = m->cfg.target_device.empty() ? "cpu" : m->cfg.target_device;
    std::string spec = device ? device : "";
    if (spec.empty() || spec == "auto") spec = package_device;
    m->device = ParseDevice(spec.c_str());
    if (m->device.device_type != kDLCPU) CheckDevice(m->device);
    if (ParseDevice(package_device.c_str()).device_type != m->device.device_type) {
      throw StatusError(LLAMA_AOT_ERR_UNSUPPORTED,
                        std::string(package_dir) + " was compiled for device \"" + package_device +
                            (m->cfg.target_device.empty() ? "\" (llama-aot.json has no target.device)"
                                                          : "\" (llama-aot.json target.device)") +
                            ", not \"" + spec + "\": open it with \"" +
                            package_device + "\" (or NULL), or recompile it for that device (--target)");
    }
    m->vocab_size = m->cfg.vocab_size;

    // ---- library -> VM ----
    if (m->cfg.system_lib) {
      m->lib = ffi::Function::GetGlobalRequired("ffi.SystemLib")(ffi::String(m->cfg.system_lib_prefix))
                   .cast<ffi::Module>();
    } else {
      std::string path = llama_aot::JoinPath(m->cfg.package_dir, m->cfg.library);
      if (::access(path.c_str(), R_OK) != 0) {
        throw StatusError(LLAMA_AOT_ERR_IO, path + " is missing or unreadable; recompile the package");
      }
      PromoteSelfToGlobal();
      m->lib = ffi::Module::LoadFromFile(path);
    }
    ffi::Optional<ffi::Function> load_exec =
        m->lib.value()->GetFunction("vm_load_executable", true);
    if (!load_exec.has_value()) {
      throw StatusError(LLAMA_AOT_ERR_FORMAT,
                        m->cfg.library + " holds no Relax VM executable (vm_load_executable)" +
                            (m->cfg.system_lib ? ": is the system-lib model linked in?" : ""));
    }
    m->vm = (*load_exec)().cast<ffi::Module>();
    const int kPooledAllocator = 2;
    ffi::Function init = VMFunction(m.get(), "vm_initialization");
    if (m->device.device_type == kDLCPU) {
      init(static_cast<int>(m->device.device_type), m->device.device_id, kPooledAllocator);
    } else {  // the VM needs the CPU as its host device too
      init(static_cast<int>(m->device.device_type), m->device.device_id, kPooledAllocator,
           static_cast<int>(kDLCPU), 0, kPooledAllocator);
    }
    m->f_embed = VMFunction(m.get(), m->cfg.fn_embed);
    m->f_prefill = VMFunction(m.get(), m->cfg.fn_prefill);
    m->f_decode = VMFunction(m.get(), m->cfg.fn_decode);
    m->f_add_seq = ffi::Function::GetGlobalRequired("vm.builtin.kv_state_add_sequence");
    m->f_remove_seq = ffi::Function::GetGlobalRequired("vm.builtin.kv_state_remove_sequence");
    m->f_begin = ffi::Function::GetGlobalRequired("vm.builtin.kv_state_begin_forward");
    m->f_end = ffi::Function::GetGlobalRequired("vm.builtin.kv_state_end_forward");
    m->f_enable_window =
        ffi::Function::GetGlobalRequired("vm.builtin.attention_kv_cache_enable_sliding_window_for_seq");

    // ---- params ----
    std::vector<std::pair<std::string, std::shared_ptr<MappedFile>>> open_files;
    std::vector<ffi::Tensor> params;
    params.reserve(m->cfg.params.size());
    for (const auto& p : m->cfg.params) params.push_back(ParamTensor(m.get(), p, &open_files));
    m->params = ffi::Array<ffi::Tensor>(params.begin(), params.end());

    // ---- KV caches ----
    for (size_t i = 0; i < m->cfg.fn_create_kv_cache.size(); ++i) {
      m->caches.push_back(CreateKVCache(VMFunction(m.get(), m->cfg.fn_create_kv_cache[i]), m->cfg,
                                        m->cfg.kv_cache_windowed[i]));
    }
    AddSequence(m.get());
  });
  if (rc == LLAMA_AOT_OK) *out = m.release();
  return rc;
}

int llama_aot_prefill(llama_aot_model* m, const int32_t* ids, int32_t n, float* logits_out) {
  if (m == nullptr || ids == nullptr || n <= 0) {
    return Fail(LLAMA_AOT_ERR_INVALID_ARGUMENT, "llama_aot_prefill: need a handle and n > 0 ids");
  }
  if (Bounded(m) && m->seq_len + n > m->cfg.context_window) {
    return Fail(LLAMA_AOT_ERR_CONTEXT_FULL,
                "llama_aot_prefill: " + std::to_string(m->seq_len + n) +
                    " tokens exceed the context window of " + std::to_string(m->cfg.context_window) +
                    " (llama_aot_reset, or recompile with a larger --context-window)");
  }
  for (int32_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || (m->vocab_size > 0 && ids[i] >= m->vocab_size)) {
      return Fail(LLAMA_AOT_ERR_INVALID_ARGUMENT, "llama_aot_prefill: token id " +
                                                      std::to_string(ids[i]) + " is outside [0, " +
                                                      std::to_string(m->vocab_size) + ")");
    }
  }
  return Guard("llama_aot_prefill", [&] {
    const int64_t chunk = m->cfg.prefill_chunk;
    for (int64_t start = 0; start < n; start += chunk) {
      int64_t len = std::min<int64_t>(chunk, n - start);
      bool last = start + len >= n;
      Forward(m, m->f_prefill, ids + start, len, last ? logits_out : nullptr);
    }
  });
}

int llama_aot_decode(llama_aot_model* m, int32_t token, float* logits_out) {
  if (m == nullptr) return Fail(LLAMA_AOT_ERR_INVALID_ARGUMENT, "llama_aot_decode: NULL handle");
  if (token < 0 || (m->vocab_size > 0 && token >= m->vocab_size)) {
    return Fail(LLAMA_AOT_ERR_INVALID_ARGUMENT, "llama_aot_decode: token id " +
                                                    std::to_string(token) + " is outside [0, " +
                                                    std::to_string(m->vocab_size) + ")");
  }
  if (Bounded(m) && m->seq_len + 1 > m->cfg.context_window) {
    return Fail(LLAMA_AOT_ERR_CONTEXT_FULL, "llama_aot_decode: the context window of " +
                                                std::to_string(m->cfg.context_window) +
                                                " tokens is full (llama_aot_reset to start over)");
  }
  return Guard("llama_aot_decode", [&] { Forward(m, m->f_decode, &token, 1, logits_out); });
}

int32_t llama_aot_sample(const llama_aot_model* m, const float* logits, float temperature,
                         float top_p, uint64_t seed) {
  if (m == nullptr || logits == nullptr || m->vocab_size <= 0) {
    return Fail(LLAMA_AOT_ERR_INVALID_ARGUMENT,
                "llama_aot_sample: need a handle with a known vocab size and a logits buffer");
  }
  const int64_t V = m->vocab_size;
  if (!(temperature > 0.0f)) {  // greedy (also for NaN temperature)
    int64_t best = 0;
    for (int64_t i = 1; i < V; ++i) {
      if (logits[i] > logits[best]) best = i;
    }
    return static_cast<int32_t>(best);
  }
  double mx = -INFINITY;
  for (int64_t i = 0; i < V; ++i) mx = std::max(mx, static_cast<double>(logits[i]));
  std::vector<std::pair<double, int32_t>> probs(static_cast<size_t>(V));
  double sum = 0.0;
  for (int64_t i = 0; i < V; ++i) {
    double p = std::exp((static_cast<double>(logits[i]) - mx) / temperature);
    probs[i] = {p, static_cast<int32_t>(i)};
    sum += p;
  }
  for (auto& p : probs) p.first /= sum;
  size_t keep = probs.size();
  if (top_p < 1.0f) {
    std::sort(probs.begin(), probs.end(),
              [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
    double cum = 0.0;
    keep = 0;
    while (keep < probs.size()) {
      cum += probs[keep].first;
      ++keep;
      if (cum >= top_p) break;
    }
  }
  double mass = 0.0;
  for (size_t i = 0; i < keep; ++i) mass += probs[i].first;
  // splitmix64(seed) -> uniform in [0, 1)
  uint64_t z = seed + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  double u = static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0) * mass;
  double acc = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    acc += probs[i].first;
    if (u < acc) return probs[i].second;
  }
  return probs[keep - 1].second;
}

int32_t llama_aot_generate(llama_aot_model* m, const int32_t* ids, int32_t n,
                           const llama_aot_generate_params* params, llama_aot_token_callback on_token,
                           void* user_data, int32_t* out_ids, int32_t out_capacity) {
  if (m == nullptr || params == nullptr || params->max_tokens <= 0 || (out_ids == nullptr && out_capacity > 0)) {
    return Fail(LLAMA_AOT_ERR_INVALID_ARGUMENT,
                "llama_aot_generate: need a handle, params with max_tokens > 0, and out_ids for out_capacity > 0");
  }
  std::vector<float> logits(static_cast<size_t>(std::max<int64_t>(m->vocab_size, 1)));
  int rc = llama_aot_prefill(m, ids, n, logits.data());  // checks ids, n and the context window
  int32_t made = 0;
  for (; rc == LLAMA_AOT_OK && made < params->max_tokens; ++made) {
    if (m->cancel.exchange(false)) {
      rc = Fail(LLAMA_AOT_ERR_CANCELLED, "llama_aot_generate: cancelled after " + std::to_string(made) + " tokens");
      break;
    }
    int32_t token = llama_aot_sample(m, logits.data(), params->temperature, params->top_p, params->seed + made);
    if (token < 0) return token;
    if (out_ids != nullptr && made < out_capacity) out_ids[made] = token;
    bool stop = (on_token != nullptr && on_token(token, user_data) != 0) ||
                (params->stop_on_eos && llama_aot_is_eos(m, token)) || made + 1 == params->max_tokens ||
                (Bounded(m) && m->seq_len + 1 > m->cfg.context_window);
    if (stop) return made + 1;
    rc = llama_aot_decode(m, token, logits.data());
  }
  return rc == LLAMA_AOT_OK ? made : rc;
}

void llama_aot_cancel(llama_aot_model* m) {
  if (m != nullptr) m->cancel.store(true);
}

int llama_aot_reset(llama_aot_model* m) {
  if (m == nullptr) return Fail(LLAMA_AOT_ERR_INVALID_ARGUMENT, "llama_aot_reset: NULL handle");
  return Guard("llama_aot_reset", [&] { ResetSequence(m); });
}

int32_t llama_aot_vocab_size(const llama_aot_model* m) {
  return m ? static_cast<int32_t>(m->vocab_size) : -1;
}

const char* llama_aot_device_info(const llama_aot_model* m) {
  if (!m) return "";
  auto* mm = const_cast<llama_aot_model*>(m);
  if (mm->device_info.empty()) mm->device_info = DeviceInfoJson(m->device);
  return mm->device_info.c_str();
}

int32_t llama_aot_context_window(const llama_aot_model* m) {
  if (m == nullptr) return -1;
  return Bounded(m) ? static_cast<int32_t>(m->cfg.context_window) : INT32_MAX;
}

int32_t llama_aot_seq_len(const llama_aot_model* m) {
  return m ? static_cast<int32_t>(m->seq_len) : -1;
}

int llama_aot_is_eos(const llama_aot_model* m, int32_t token) {
  if (m == nullptr) return 0;
  const auto& e = m->cfg.eos_token_ids;
  return std::find(e.begin(), e.end(), static_cast<int64_t>(token)) != e.end() ? 1 : 0;
}

int llama_aot_set_threads(int num_threads, int affinity) {
  return Guard("llama_aot_set_threads", [&] {
    int mode = affinity < 0 ? -1 : 1;  // TVM's ThreadGroup::kLittle / kBig (kBig is its default)
    ffi::Function::GetGlobalRequired("runtime.config_threadpool")(mode, std::max(num_threads, 0));
  });
}

void llama_aot_close(llama_aot_model* m) {
  if (m == nullptr) return;
  try {
    delete m;  // drops caches, params (then the mappings), the VM, then the library
  } catch (...) {
  }
}

const char* llama_aot_last_error(void) { return g_last_error.c_str(); }

const char* llama_aot_status_string(int status) {
  switch (status) {
    case LLAMA_AOT_OK: return "ok";
    case LLAMA_AOT_ERR_INVALID_ARGUMENT: return "invalid argument";
    case LLAMA_AOT_ERR_IO: return "i/o error";
    case LLAMA_AOT_ERR_FORMAT: return "bad package format";
    case LLAMA_AOT_ERR_RUNTIME: return "runtime error";
    case LLAMA_AOT_ERR_CONTEXT_FULL: return "context window full";
    case LLAMA_AOT_ERR_UNSUPPORTED: return "unsupported";
    case LLAMA_AOT_ERR_CANCELLED: return "cancelled";
    default: return "unknown status";
  }
}

}  // extern "C"
