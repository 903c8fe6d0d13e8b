"""``target.build.vulkan``: lowered device IRModule -> "vulkan" runtime module.

``tvm.compile(mod, target=Target({"kind": "vulkan", ...}, host={"kind": "llvm", ...}))`` splits host
and device code and calls the global function ``target.build.vulkan(IRModule, Target)`` with the
device kernels (PrimFuncs with calling_conv=2, global_symbol, tirx.kernel_launch_params, typed
pointer parameters).  It must return a ``runtime.Module``; the host LLVM module imports it and looks
kernels up by name at run time.  :func:`register` installs :func:`build_vulkan` there.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading

from runtime_stubs.errors import LlamaAotError

from .errors import VulkanCodegenError
from .glsl import GLSLKernel, kernel_to_glsl
from .module_format import VulkanShader, serialize_vulkan_module
from .runtime_module import create_vulkan_module
from .spirv import compile_glsl
from .target import VulkanCaps


def _kernel_name(gvar, func) -> str:
    attrs = func.attrs
    sym = attrs.get("global_symbol") if attrs is not None else None
    return str(sym) if sym is not None else gvar.name_hint


def compile_kernels(mod, target, validate: bool = True) -> dict[str, GLSLKernel]:
    """GLSL and SPIR-V for every kernel of a lowered device IRModule (no runtime module)."""
    caps = VulkanCaps.from_target(target)
    kernels: dict[str, GLSLKernel] = {}
    for gvar, func in sorted(mod.functions.items(), key=lambda kv: kv[0].name_hint):
        name = _kernel_name(gvar, func)
        ftarget = func.attrs.get("target") if func.attrs is not None else None
        kcaps = caps if ftarget is None or ftarget.kind.name != "vulkan" else VulkanCaps.from_target(ftarget)
        if name in kernels:
            raise VulkanCodegenError(f"two Vulkan kernels are named '{name}'")
        kernels[name] = kernel_to_glsl(func, name, kcaps)

    # glslangValidator + spirv-val are subprocesses (~0.2 s per kernel): run them in parallel
    def _compile(k: GLSLKernel):
        k.spirv = compile_glsl(k.source, k.target_env, k.name, validate=validate)

    jobs = int(os.environ.get("LLAMA_AOT_VULKAN_JOBS", "0")) or min(8, os.cpu_count() or 1)
    if jobs > 1 and len(kernels) > 1:
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            for f in [pool.submit(_compile, k) for k in kernels.values()]:
                f.result()
    else:
        for k in kernels.values():
            _compile(k)
    return kernels


def build_vulkan(mod, target):
    """Compile the device kernels of ``mod`` to SPIR-V and wrap them in a "vulkan" runtime module."""
    kernels = compile_kernels(mod, target)
    payload = serialize_vulkan_module(
        {n: VulkanShader(k.spirv, k.function_info, k.flag) for n, k in kernels.items()}
    )
    source = "\n".join(f"// ---- {n} ----\n{k.source}" for n, k in kernels.items())
    meta = {n: dict(k.to_json(), glsl=k.source) for n, k in kernels.items()}
    return create_vulkan_module(payload, source, meta, list(kernels))


_state = threading.local()


def _build_entry(mod, target):
    _state.last_error = None
    try:
        return build_vulkan(mod, target)
    except LlamaAotError as e:
        _state.last_error = e  # crossing the FFI turns it into a RuntimeError with the same message
        raise


@contextlib.contextmanager
def original_errors():
    """Re-raise Vulkan back-end errors from inside ``tvm.compile`` with their own type
    (VulkanCodegenError / VulkanToolchainError, both LlamaAotError) instead of RuntimeError::

        with original_errors():
            ex = tvm.compile(mod, target=target)
    """
    _state.last_error = None
    try:
        yield
    except LlamaAotError:
        raise
    except Exception as e:
        last = getattr(_state, "last_error", None)
        if last is not None and str(last) in str(e):
            raise last from None
        raise
    finally:
        _state.last_error = None


def register(override: bool = True) -> None:
    """Make ``tvm.compile`` / ``relax.build`` use this back end for "vulkan" targets."""
    import tvm

    tvm.register_global_func("target.build.vulkan", _build_entry, override=override)


def kernels_from_module(module) -> dict[str, GLSLKernel]:
    """The kernels of a "vulkan" module built here (or of the first one in an Executable's import
    tree), with SPIR-V, FunctionInfo and -- when the module still has its compile-time metadata --
    parameters, workgroup size and launch expressions, ready for :func:`.launch.run_kernel`."""
    from .glsl import ParamInfo
    from .module_format import parse_vulkan_module
    from .runtime_module import find_vulkan_modules, module_metadata, module_payload

    mods = [module] if getattr(module, "kind", None) == "vulkan" else find_vulkan_modules(module)
    if not mods:
        raise VulkanCodegenError("no 'vulkan' module in this module's import tree")
    out = {}
    for m in mods:
        meta = module_metadata(m)
        for name, sh in parse_vulkan_module(module_payload(m)).items():
            km = meta.get(name)
            if km:
                params = [ParamInfo(**p) for p in km["params"]]
                k = GLSLKernel(
                    name=name, source=km.get("glsl", ""), target_env=km["target_env"], params=params,
                    function_info=sh.info, flag=sh.flag, workgroup_size=tuple(km["workgroup_size"]),
                    launch_exprs=km["launch_exprs"], shared_bytes=km["shared_bytes"],
                    subgroup_size=km["subgroup_size"], spirv=sh.words,
                )  # fmt: skip
            else:
                params = [
                    ParamInfo(f"arg{i}", "buffer" if t == "handle" else "scalar", t)
                    for i, t in enumerate(sh.info.arg_types)
                ]
                k = GLSLKernel(
                    name=name, source="", target_env="", params=params, function_info=sh.info, flag=sh.flag,
                    workgroup_size=(0, 0, 0), launch_exprs=[], shared_bytes=0, subgroup_size=0, spirv=sh.words,
                )  # fmt: skip
            out[name] = k
    return out
