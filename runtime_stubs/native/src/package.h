/*
 * llama-aot runtime: reading a compiled package (llama-aot.json + params/manifest.json) and
 * mapping its weight shards.  Internal to libllama_aot_runtime.
 */
#ifndef LLAMA_AOT_SRC_PACKAGE_H_
#define LLAMA_AOT_SRC_PACKAGE_H_

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace llama_aot {

/*! \brief An error with the llama_aot_status code the C API returns for it. */
class StatusError : public std::runtime_error {
 public:
  StatusError(int status, const std::string& msg) : std::runtime_error(msg), status(status) {}
  int status;
};

struct ParamEntry {
  std::string name;
  std::string dtype;  // numpy spelling: "float32", "float16", "uint32", "int8", ...
  std::vector<int64_t> shape;
  std::string file;   // relative to <package>/params/ (the manifest's directory)
  uint64_t offset = 0;
  uint64_t nbytes = 0;
};

/*! \brief What the runtime needs from OUT/llama-aot.json ("runtime" section + a few model facts). */
struct PackageConfig {
  std::string package_dir;
  // "library": a path relative to the package ("lib/model.so"), or "system:<prefix>" for a model
  // linked into the executable as a TVM system library (prefix may be empty).
  std::string library;
  bool system_lib = false;
  std::string system_lib_prefix;
  std::string params_manifest = "params/manifest.json";
  int64_t num_kv_caches = 0;
  int64_t page_size = 16;
  int64_t context_window = 0;
  int64_t prefill_chunk = 0;
  std::string fn_embed = "embed";
  std::string fn_prefill = "prefill";
  std::string fn_decode = "decode";
  std::vector<std::string> fn_create_kv_cache;
  // attention window (compile --sliding-window W --attention-sinks S; runtime_stubs/attention_window.py):
  // 0 = none. cache_window: the window TVM's cache slides to (W + prefill_chunk - 1); kv_cache_windowed[i]:
  // cache i slides (its layers are windowed); window_every_layer: all do, so the sequence is unbounded
  int64_t sliding_window = 0;
  int64_t attention_sinks = 0;
  int64_t cache_window = 0;
  bool window_every_layer = false;
  std::vector<bool> kv_cache_windowed;
  // target.device: the device kind the package was compiled for ("cpu", "vulkan", "opencl");
  // empty when llama-aot.json has no target section (hand-made packages), which means "cpu"
  std::string target_device;
  // target.cpu_features: the /proc/cpuinfo flags the library's code needs (x86 host builds; empty for a
  // cross build, whose triple says what it needs); target.tvm_host.mcpu names the CPU it was built for
  std::vector<std::string> cpu_features;
  std::string target_mcpu;
  int64_t vocab_size = -1;  // from model.vocab_size when present, else from the first logits
  std::vector<int64_t> eos_token_ids;
  std::vector<ParamEntry> params;  // in the order the VM functions take them
};

/*! \brief Parse <dir>/llama-aot.json and its params manifest; throws StatusError. */
PackageConfig ReadPackage(const std::string& package_dir);

/*! \brief Check every file of the package against its checksums.json before anything is loaded, as
 * runtime_stubs/integrity.py does by default: present and of the recorded size; libraries, objects and JSON
 * documents by their full sha256, weight shards by their first and last MiB; no unlisted file in lib/.
 * ``system_lib``: the code is linked into the app, so lib/ is not checked. Throws StatusError. */
void VerifyPackage(const std::string& package_dir, bool system_lib);

/*! \brief Refuse a package whose library needs instruction sets this CPU lacks (cfg.cpu_features against
 * /proc/cpuinfo's flags), as runtime_stubs/cpu_features.py does: a clear error instead of SIGILL. A system
 * without /proc/cpuinfo flags (not Linux x86) is not checked. Throws StatusError. */
void CheckHostCpu(const PackageConfig& cfg, const std::string& cpuinfo = "/proc/cpuinfo");

/*! \brief A read-only memory map of a whole file (munmap on destruction). */
class MappedFile {
 public:
  static std::shared_ptr<MappedFile> Open(const std::string& path);  // throws StatusError
  ~MappedFile();
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  MappedFile() = default;
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

/*! \brief a + "/" + b unless b is absolute. */
std::string JoinPath(const std::string& a, const std::string& b);

}  // namespace llama_aot

#endif  // LLAMA_AOT_SRC_PACKAGE_H_
