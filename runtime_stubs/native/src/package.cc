/*
 * llama-aot runtime: package reading.  JSON goes through tvm_ffi's parser (ffi::json::Parse, built
 * from the wheel's src/ffi/extra/json_parser.cc), so the runtime has no other JSON dependency.
 */
#include "package.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/string.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

#include "llama_aot.h"
#include "sha256.h"

namespace llama_aot {

namespace json = tvm::ffi::json;
using tvm::ffi::Any;
using tvm::ffi::String;

namespace {

[[noreturn]] void FormatError(const std::string& where, const std::string& what) {
  throw StatusError(LLAMA_AOT_ERR_FORMAT, where + ": " + what);
}

std::string ReadTextFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    throw StatusError(LLAMA_AOT_ERR_IO, path + " cannot be opened (" + std::strerror(errno) +
                                            "): is this a llama-aot package directory?");
  }
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json::Object ParseObject(const std::string& path) {
  String err;
  json::Value v = json::Parse(String(ReadTextFile(path)), &err);
  if (!err.empty()) FormatError(path, "not valid JSON (" + std::string(err) + ")");
  auto obj = v.try_cast<json::Object>();
  if (!obj.has_value()) FormatError(path, "top level is not a JSON object");
  return *obj;
}

/*! \brief Typed access to a JSON object with error messages that name the file and key. */
struct Obj {
  json::Object o;
  std::string where;

  bool Has(const char* key) const { return o.count(String(key)) != 0; }
  Any Get(const char* key) const {
    auto it = o.find(String(key));
    if (it == o.end()) FormatError(where, std::string("missing key \"") + key + "\"");
    return (*it).second;
  }
  Obj Child(const char* key) const {
    auto v = Get(key).try_cast<json::Object>();
    if (!v.has_value()) FormatError(where, std::string("\"") + key + "\" is not an object");
    return Obj{*v, where + "." + key};
  }
  std::string Str(const char* key) const { return AsStr(Get(key), key); }
  int64_t Int(const char* key) const { return AsInt(Get(key), key); }
  std::vector<int64_t> IntList(const char* key) const {
    auto arr = Get(key).try_cast<json::Array>();
    if (!arr.has_value()) FormatError(where, std::string("\"") + key + "\" is not a list");
    std::vector<int64_t> out;
    for (const Any& v : *arr) out.push_back(AsInt(v, key));
    return out;
  }
  std::vector<bool> BoolList(const char* key) const {
    auto arr = Get(key).try_cast<json::Array>();
    if (!arr.has_value()) FormatError(where, std::string("\"") + key + "\" is not a list");
    std::vector<bool> out;
    for (const Any& v : *arr) {
      auto b = v.try_cast<bool>();
      if (!b.has_value()) FormatError(where, std::string("\"") + key + "\" is not a list of true/false");
      out.push_back(*b);
    }
    return out;
  }
  bool IsNull(const char* key) const { return Has(key) && Get(key) == nullptr; }
  std::vector<std::string> StrList(const char* key) const {
    auto arr = Get(key).try_cast<json::Array>();
    if (!arr.has_value()) FormatError(where, std::string("\"") + key + "\" is not a list");
    std::vector<std::string> out;
    for (const Any& v : *arr) out.push_back(AsStr(v, key));
    return out;
  }
  std::string AsStr(const Any& v, const char* key) const {
    auto s = v.try_cast<String>();
    if (!s.has_value()) FormatError(where, std::string("\"") + key + "\" is not a string");
    return std::string(*s);
  }
  int64_t AsInt(const Any& v, const char* key) const {
    if (auto i = v.try_cast<int64_t>()) return *i;
    if (auto d = v.try_cast<double>()) {
      if (*d == static_cast<double>(static_cast<int64_t>(*d))) return static_cast<int64_t>(*d);
    }
    FormatError(where, std::string("\"") + key + "\" is not an integer");
  }
};

}  // namespace

std::string JoinPath(const std::string& a, const std::string& b) {
  if (b.empty()) return a;
  if (b[0] == '/' || a.empty()) return b;
  if (a.back() == '/') return a + b;
  return a + "/" + b;
}

PackageConfig ReadPackage(const std::string& package_dir) {
  PackageConfig cfg;
  cfg.package_dir = package_dir;
  const std::string config_path = JoinPath(package_dir, "llama-aot.json");
  Obj top{ParseObject(config_path), config_path};
  Obj rt = top.Child("runtime");

  cfg.library = rt.Str("library");
  if (cfg.library.rfind("system:", 0) == 0) {
    cfg.system_lib = true;
    cfg.system_lib_prefix = cfg.library.substr(7);
  }
  if (rt.Has("params_manifest")) cfg.params_manifest = rt.Str("params_manifest");
  if (rt.Has("page_size")) cfg.page_size = rt.Int("page_size");
  // context_window / prefill_chunk: in "runtime" per the contract; the compiler also writes them
  // at the top level, which is accepted as a fallback.
  cfg.context_window = rt.Has("context_window") ? rt.Int("context_window") : top.Int("context_window");
  cfg.prefill_chunk = rt.Has("prefill_chunk") ? rt.Int("prefill_chunk") : top.Int("prefill_chunk");

  Obj fns = rt.Child("functions");
  if (fns.Has("embed")) cfg.fn_embed = fns.Str("embed");
  if (fns.Has("prefill")) cfg.fn_prefill = fns.Str("prefill");
  if (fns.Has("decode")) cfg.fn_decode = fns.Str("decode");
  cfg.fn_create_kv_cache = fns.StrList("create_kv_cache");
  cfg.num_kv_caches = rt.Has("num_kv_caches") ? rt.Int("num_kv_caches")
                                              : static_cast<int64_t>(cfg.fn_create_kv_cache.size());
  if (cfg.num_kv_caches != static_cast<int64_t>(cfg.fn_create_kv_cache.size())) {
    FormatError(rt.where, "num_kv_caches (" + std::to_string(cfg.num_kv_caches) +
                              ") differs from the number of functions.create_kv_cache entries (" +
                              std::to_string(cfg.fn_create_kv_cache.size()) + ")");
  }
  if (cfg.context_window <= 0 || cfg.prefill_chunk <= 0 || cfg.page_size <= 0) {
    FormatError(rt.where, "context_window, prefill_chunk and page_size must be positive");
  }

  // attention options (runtime_stubs/attention_window.py KNOWN_OPTIONS): one this runtime does not know (a newer
  // compiler's) is refused rather than ignored
  if (top.Has("attention")) {
    Obj att = top.Child("attention");
    static const char* kKnown[] = {"sliding_window", "attention_sinks", "cache_window", "windowed_layers",
                                   "kv_cache_dtype"};
    for (const auto& kv : att.o) {
      std::string key(kv.first.cast<String>());
      if (std::none_of(std::begin(kKnown), std::end(kKnown), [&](const char* k) { return key == k; })) {
        FormatError(att.where, "the package uses attention option \"" + key + "\", which this runtime cannot "
                               "honour; run it with the llama-aot that compiled it, or recompile it with this one");
      }
    }
    if (att.Has("sliding_window") && !att.IsNull("sliding_window")) {
      cfg.sliding_window = att.Int("sliding_window");
      cfg.attention_sinks = att.Has("attention_sinks") ? att.Int("attention_sinks") : 0;
      cfg.cache_window = att.Has("cache_window") ? att.Int("cache_window") : cfg.sliding_window + cfg.prefill_chunk - 1;
      cfg.window_every_layer = !att.Has("windowed_layers") || att.IsNull("windowed_layers");
      if (cfg.sliding_window <= cfg.attention_sinks || cfg.attention_sinks < 0 || cfg.cache_window < cfg.sliding_window) {
        FormatError(att.where, "sliding_window must exceed attention_sinks >= 0, and cache_window be >= sliding_window");
      }
    }
  }
  cfg.kv_cache_windowed = rt.Has("kv_cache_windowed")
                              ? rt.BoolList("kv_cache_windowed")
                              : std::vector<bool>(cfg.fn_create_kv_cache.size(), cfg.sliding_window > 0);
  if (cfg.kv_cache_windowed.size() != cfg.fn_create_kv_cache.size() ||
      (cfg.sliding_window == 0 &&
       std::any_of(cfg.kv_cache_windowed.begin(), cfg.kv_cache_windowed.end(), [](bool w) { return w; }))) {
    FormatError(rt.where, "kv_cache_windowed does not match the KV caches and the attention window");
  }
  if (top.Has("target")) {
    Obj target = top.Child("target");
    if (target.Has("device")) cfg.target_device = target.Str("device");
    if (target.Has("cpu_features")) cfg.cpu_features = target.StrList("cpu_features");
    if (target.Has("tvm_host") && target.Get("tvm_host").try_cast<json::Object>().has_value()) {
      Obj host = target.Child("tvm_host");
      if (host.Has("mcpu")) cfg.target_mcpu = host.Str("mcpu");
    }
  }

  if (top.Has("model")) {
    Obj model = top.Child("model");
    if (model.Has("vocab_size")) cfg.vocab_size = model.Int("vocab_size");
    if (model.Has("eos_token_ids")) {
      Any v = model.Get("eos_token_ids");
      if (v.try_cast<json::Array>().has_value()) {
        cfg.eos_token_ids = model.IntList("eos_token_ids");
      } else if (v.try_cast<int64_t>().has_value()) {
        cfg.eos_token_ids.push_back(model.Int("eos_token_ids"));
      }
    }
  }

  // ---- params manifest ----
  const std::string manifest_path = JoinPath(package_dir, cfg.params_manifest);
  Obj manifest{ParseObject(manifest_path), manifest_path};
  auto list = manifest.Get("params").try_cast<json::Array>();
  if (!list.has_value()) FormatError(manifest_path, "\"params\" is not a list");
  for (size_t i = 0; i < list->size(); ++i) {
    auto o = (*list)[i].try_cast<json::Object>();
    std::string where = manifest_path + ": params[" + std::to_string(i) + "]";
    if (!o.has_value()) FormatError(where, "not an object");
    Obj e{*o, where};
    ParamEntry p;
    p.name = e.Str("name");
    p.dtype = e.Str("dtype");
    p.shape = e.IntList("shape");
    p.file = e.Str("file");
    p.offset = static_cast<uint64_t>(e.Int("offset"));
    p.nbytes = static_cast<uint64_t>(e.Int("nbytes"));
    cfg.params.push_back(std::move(p));
  }
  return cfg;
}

void CheckHostCpu(const PackageConfig& cfg, const std::string& cpuinfo) {
  if (cfg.cpu_features.empty()) return;  // a cross build, or a package from before the check
  std::ifstream f(cpuinfo);
  std::string line, flags;
  while (f && std::getline(f, line)) {
    if (line.rfind("flags", 0) == 0 && line.find(':') != std::string::npos) {
      flags = " " + line.substr(line.find(':') + 1) + " ";
      break;
    }
  }
  if (flags.empty()) return;  // nothing to compare with
  for (char& c : flags) {
    if (c == '\t') c = ' ';
  }
  std::string missing;
  for (const std::string& feature : cfg.cpu_features) {
    if (flags.find(" " + feature + " ") == std::string::npos) missing += (missing.empty() ? "" : ", ") + feature;
  }
  if (!missing.empty()) {
    throw StatusError(LLAMA_AOT_ERR_UNSUPPORTED,
                      cfg.package_dir + " was compiled for a CPU with " + missing + " (-mcpu " +
                          (cfg.target_mcpu.empty() ? "?" : cfg.target_mcpu) +
                          "), which this CPU lacks: compile it on this machine (llama-aot compile ... --target host)");
  }
}

namespace {

// the quick check's sample at each end of a weight shard, and the files always hashed in full (as
// runtime_stubs/integrity.py: code, and the documents that say how to run it)
constexpr uint64_t kSampleBytes = 1 << 20;
const char* const kAlwaysFull[] = {".so", ".a", ".o", ".dylib", ".dll", ".json", ".spv", ".metal", ".cl"};

bool AlwaysFull(const std::string& rel) {
  if (rel.rfind("lib/", 0) == 0) return true;
  for (const char* ext : kAlwaysFull) {
    const size_t n = std::strlen(ext);
    if (rel.size() >= n && rel.compare(rel.size() - n, n, ext) == 0) return true;
  }
  return false;
}

void ListFiles(const std::string& root, const std::string& rel, std::vector<std::string>* out) {
  DIR* d = ::opendir(JoinPath(root, rel).c_str());
  if (d == nullptr) return;
  while (struct dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    const std::string child = rel + "/" + name;
    struct stat st;
    if (::stat(JoinPath(root, child).c_str(), &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      ListFiles(root, child, out);
    } else {
      out->push_back(child);
    }
  }
  ::closedir(d);
}

[[noreturn]] void Corrupted(int status, const std::string& path, const std::string& what) {
  throw StatusError(status, path + " " + what + "; the package is corrupted or was modified: recompile or re-copy it");
}

}  // namespace

void VerifyPackage(const std::string& package_dir, bool system_lib) {
  const std::string path = JoinPath(package_dir, "checksums.json");
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    throw StatusError(LLAMA_AOT_ERR_IO, path + " is missing: the package cannot be checked; recompile it with "
                                               "this llama-aot");
  }
  Obj top{ParseObject(path), path};
  if (top.Int("format") != 1) FormatError(path, "unknown format; recompile the package with this llama-aot");
  Obj files = top.Child("files");
  if (!system_lib) {  // code in lib/ that checksums.json does not vouch for is never loaded
    std::vector<std::string> present;
    ListFiles(package_dir, "lib", &present);
    for (const std::string& rel : present) {
      if (!files.Has(rel.c_str())) {
        throw StatusError(LLAMA_AOT_ERR_FORMAT, JoinPath(package_dir, rel) + " is not listed in checksums.json: "
                                                "refusing to run a package with unlisted code; recompile it");
      }
    }
  }
  for (const auto& kv : files.o) {
    const std::string rel = std::string(kv.first.cast<String>());
    if (rel.empty() || rel[0] == '/' || rel.find("..") != std::string::npos) {
      FormatError(path, "\"" + rel + "\" is not a file of the package");
    }
    // a system-library app links lib/ into its executable (its own signature covers that code)
    if (system_lib && rel.rfind("lib/", 0) == 0) continue;
    auto rec_obj = kv.second.try_cast<json::Object>();
    if (!rec_obj.has_value()) FormatError(path, "the record of " + rel + " is not an object");
    Obj rec{*rec_obj, path + ": " + rel};
    const std::string file = JoinPath(package_dir, rel);
    if (::stat(file.c_str(), &st) != 0) {
      throw StatusError(LLAMA_AOT_ERR_IO, file + " is missing; the package is incomplete: recompile or re-copy it");
    }
    const uint64_t want = static_cast<uint64_t>(rec.Int("bytes"));
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    if (size != want) {
      Corrupted(LLAMA_AOT_ERR_IO, file, std::string("is ") + (size < want ? "truncated" : "longer than recorded") +
                                            " (" + std::to_string(size) + " bytes, " + std::to_string(want) +
                                            " expected)");
    }
    std::shared_ptr<MappedFile> m = MappedFile::Open(file);
    bool ok;
    if (AlwaysFull(rel)) {
      ok = Sha256Hex(m->data(), m->size()) == rec.Str("sha256");
    } else {
      const uint64_t n = size < kSampleBytes ? size : kSampleBytes;
      ok = Sha256Hex(m->data(), n) == rec.Str("head_sha256") &&
           Sha256Hex(m->data() + (size - n), n) == rec.Str("tail_sha256");
    }
    if (!ok) Corrupted(LLAMA_AOT_ERR_FORMAT, file, "fails its sha256 check");
  }
}

std::shared_ptr<MappedFile> MappedFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw StatusError(LLAMA_AOT_ERR_IO,
                      path + " cannot be opened: " + std::strerror(errno));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    throw StatusError(LLAMA_AOT_ERR_IO, "cannot stat " + path + ": " + std::strerror(e));
  }
  std::shared_ptr<MappedFile> m(new MappedFile());
  m->size_ = static_cast<uint64_t>(st.st_size);
  if (m->size_ != 0) {
    void* p = ::mmap(nullptr, m->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      throw StatusError(LLAMA_AOT_ERR_IO, "cannot mmap " + path + ": " + std::strerror(e));
    }
    m->data_ = static_cast<uint8_t*>(p);
  }
  ::close(fd);  // the mapping stays valid
  return m;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

}  // namespace llama_aot
