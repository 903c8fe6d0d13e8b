"""A runtime module of kind "vulkan" that the wheel can embed with ``export_library``.

The wheel has no VulkanModule and tvm-ffi cannot subclass ``ffi::ModuleObj`` from Python (kind()
and SaveToBytes() are C++ virtuals).  So a ~60-line C++ plugin, compiled once against the wheel's
own headers (like any TVM runtime plugin) and cached, defines a module whose ``kind()`` is "vulkan",
which is binary-serializable and whose ``SaveToBytes()`` returns the payload written by
:func:`module_format.serialize_vulkan_module`.  ``export_library`` packs it like any device module
(kind string + payload in ``__tvm_ffi__library_bin``); a real Vulkan runtime's
``ffi.Module.load_from_bytes.vulkan`` loads it.  Calling a kernel through this stub raises: it only
carries the shaders.

The plugin needs a C++17 compiler ($CXX, else g++/c++/clang++) the first time; the result is cached
in $LLAMA_AOT_CACHE_DIR (default ~/.cache/llama-aot).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading

from .errors import VulkanToolchainError
from .module_format import parse_vulkan_module

PLUGIN_SOURCE = r"""
// llama-aot: compile-side "vulkan" runtime module (carries SPIR-V shaders, cannot run them).
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/memory.h>
#include <tvm/ffi/reflection/registry.h>
#include <tvm/ffi/string.h>

#include <string>

namespace llama_aot {
namespace {
using namespace tvm::ffi;

class VulkanShaderModuleObj : public ModuleObj {
 public:
  VulkanShaderModuleObj(Bytes payload, String source, String metadata, Array<String> names)
      : payload_(payload), source_(source), metadata_(metadata), names_(names) {}

  const char* kind() const final { return "vulkan"; }
  int GetPropertyMask() const final { return Module::kBinarySerializable; }

  Optional<Function> GetFunction(const String& name) final {
    if (name == "__llama_aot_vulkan_payload") {
      Bytes p = payload_;
      return Function::FromTyped([p]() { return p; });
    }
    if (name == "__llama_aot_vulkan_metadata") {
      String m = metadata_;
      return Function::FromTyped([m]() { return m; });
    }
    for (const String& n : names_) {
      if (n == name) {
        std::string kname = name;
        return Function::FromPacked([kname](PackedArgs, Any*) {
          TVM_FFI_THROW(RuntimeError)
              << "Vulkan kernel '" << kname
              << "' cannot run: this module only carries SPIR-V (load a Vulkan runtime to execute it)";
        });
      }
    }
    return std::nullopt;
  }

  Bytes SaveToBytes() const final { return payload_; }

  String InspectSource(const String& format) const final {
    if (format == "json") return metadata_;
    return source_;
  }

 private:
  Bytes payload_;
  String source_;
  String metadata_;
  Array<String> names_;
};
}  // namespace
}  // namespace llama_aot

TVM_FFI_STATIC_INIT_BLOCK() {
  namespace refl = tvm::ffi::reflection;
  refl::GlobalDef().def("llama_aot.vulkan.ShaderModuleCreate",
                        [](tvm::ffi::Bytes payload, tvm::ffi::String source, tvm::ffi::String metadata,
                           tvm::ffi::Array<tvm::ffi::String> names) {
                          return tvm::ffi::Module(tvm::ffi::make_object<llama_aot::VulkanShaderModuleObj>(
                              payload, source, metadata, names));
                        });
}
"""

_CREATE = "llama_aot.vulkan.ShaderModuleCreate"
_LOADER = "ffi.Module.load_from_bytes.vulkan"
_lock = threading.Lock()
_loaded = False


def _cache_dir() -> str:
    d = os.environ.get("LLAMA_AOT_CACHE_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "llama-aot")
    return d


def _find_cxx() -> str:
    for c in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if c and shutil.which(c):
            return shutil.which(c)
    raise VulkanToolchainError(
        "no C++ compiler found (set $CXX or install g++): needed once to build the Vulkan module plugin"
    )


def plugin_path() -> str:
    """Build (if needed) and return the path of the plugin shared library."""
    import tvm_ffi
    import tvm_ffi.libinfo

    inc = tvm_ffi.libinfo.find_include_path()
    libdir = os.path.dirname(tvm_ffi.libinfo.find_libtvm_ffi())
    key = hashlib.sha256(
        (PLUGIN_SOURCE + tvm_ffi.__version__ + inc + libdir).encode()
    ).hexdigest()[:16]
    out = os.path.join(_cache_dir(), f"vulkan_shader_module-{key}.so")
    if os.path.exists(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    cxx = _find_cxx()
    with tempfile.TemporaryDirectory(prefix="llama_aot_vkmod_") as d:
        src = os.path.join(d, "vulkan_shader_module.cc")
        tmp = os.path.join(d, "out.so")
        with open(src, "w") as f:
            f.write(PLUGIN_SOURCE)
        dlpack = tvm_ffi.libinfo.find_dlpack_include_path()
        cmd = [cxx, "-std=c++17", "-O2", "-shared", "-fPIC", src, f"-I{inc}", f"-I{dlpack}",
               f"-L{libdir}", "-ltvm_ffi", f"-Wl,-rpath,{libdir}", "-o", tmp]  # fmt: skip
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise VulkanToolchainError(f"building the Vulkan module plugin failed:\n{' '.join(cmd)}\n{p.stderr}")
        final_tmp = out + f".{os.getpid()}.tmp"
        shutil.copyfile(tmp, final_tmp)
        os.replace(final_tmp, out)  # atomic: concurrent builders race harmlessly
    return out


def load_plugin() -> None:
    """Load the plugin into the process (registers ``llama_aot.vulkan.ShaderModuleCreate``)."""
    global _loaded
    with _lock:
        if _loaded:
            return
        import tvm

        if tvm.get_global_func(_CREATE, allow_missing=True) is None:
            ctypes.CDLL(plugin_path(), ctypes.RTLD_GLOBAL)
        _loaded = True


def create_vulkan_module(payload: bytes, source: str = "", metadata: dict | str | None = None, names=None):
    """A ``tvm.runtime.Module`` of kind "vulkan" whose serialized form is ``payload``."""
    load_plugin()
    import tvm

    if names is None:
        names = sorted(parse_vulkan_module(payload))
    if not isinstance(metadata, str):
        metadata = json.dumps(metadata or {})
    return tvm.get_global_func(_CREATE)(bytes(payload), source, metadata, list(names))


def module_payload(mod) -> bytes:
    """The serialized payload of a "vulkan" module created here (or loaded by our loader)."""
    return bytes(mod.get_function("__llama_aot_vulkan_payload")())


def module_metadata(mod) -> dict:
    """Compile-time metadata (per kernel: params, workgroup, launch expressions, GLSL); {} after a reload."""
    return json.loads(str(mod.get_function("__llama_aot_vulkan_metadata")()) or "{}")


def register_vulkan_loader(override: bool = False) -> bool:
    """Register ``ffi.Module.load_from_bytes.vulkan`` returning this stub module, so that
    ``tvm.runtime.load_module`` accepts libraries with Vulkan kernels where no Vulkan runtime is
    loaded (to inspect them or run them with :mod:`.launch`).  A loader already registered (a real
    Vulkan runtime) is kept unless ``override``.  Returns whether ours is now registered."""
    import tvm

    if not override and tvm.get_global_func(_LOADER, allow_missing=True) is not None:
        return False
    load_plugin()

    def _load(data):
        return create_vulkan_module(bytes(data))

    tvm.register_global_func(_LOADER, _load, override=True)
    return True


def find_vulkan_modules(mod) -> list:
    """All modules of kind "vulkan" in the import tree of a runtime module or Executable."""
    root = getattr(mod, "mod", mod)
    out, stack, seen = [], [root], set()
    while stack:
        m = stack.pop()
        key = m.__hash__()
        if key in seen:
            continue
        seen.add(key)
        if m.kind == "vulkan":
            out.append(m)
        stack.extend(m.imports)
    return out
