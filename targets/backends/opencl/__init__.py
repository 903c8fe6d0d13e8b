"""OpenCL back end checks: run the kernels TVM's OpenCL codegen emits on a CPU OpenCL driver.

The apache-tvm wheel generates OpenCL C for Adreno/Mali targets but has no OpenCL runtime.  This
package compiles a Relax module for an OpenCL target while capturing the launch information from
the lowered TIR (capture.py) and replays kernels with pyopencl on any OpenCL driver -- pocl on CI
(launch.py).  Drivers without cl_khr_fp16 run an fp32 rewrite of fp16 kernels (source.py).

Usage::

    from targets.backends import opencl as ocl
    build = ocl.compile_opencl(mod, target, relax_pipeline=build_pipeline(target))
    out = ocl.run_function(build, "dequant_matmul", [x, qweight, scale, np.empty_like(y)])[-1]

See docs/opencl.md.
"""

from .capture import (
    HostFunction,
    Kernel,
    KernelCall,
    KernelParam,
    OpenCLBuild,
    OpenCLCaptureError,
    TensorArg,
    capture_split_modules,
    compile_opencl,
    find_opencl_modules,
    source_signature,
)
from .launch import (
    NO_DRIVER_REASON,
    OpenCLDevice,
    OpenCLRuntimeError,
    default_device,
    run_function,
    run_kernel,
    unavailable_reason,
)
from .source import (
    OpenCLSourceError,
    clang_syntax_check,
    emulate_fp16,
    find_clang,
    local_memory_bytes,
    split_kernels,
    uses_fp16,
)

__all__ = [
    "NO_DRIVER_REASON",
    "HostFunction",
    "Kernel",
    "KernelCall",
    "KernelParam",
    "OpenCLBuild",
    "OpenCLCaptureError",
    "OpenCLDevice",
    "OpenCLRuntimeError",
    "OpenCLSourceError",
    "TensorArg",
    "capture_split_modules",
    "clang_syntax_check",
    "compile_opencl",
    "default_device",
    "emulate_fp16",
    "find_clang",
    "find_opencl_modules",
    "local_memory_bytes",
    "run_function",
    "run_kernel",
    "source_signature",
    "split_kernels",
    "unavailable_reason",
    "uses_fp16",
]
