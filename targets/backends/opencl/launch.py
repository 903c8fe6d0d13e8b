"""Run kernels of an :class:`~.capture.OpenCLBuild` on an OpenCL device with pyopencl.

A test harness, not the runtime.  It follows what TVM's OpenCL runtime does with the module --

* one program per kernel, from the kernel's part of the source (split at ``// Function:``);
* arguments in kernel-parameter order: ``cl_mem`` for buffers, the scalar's own type otherwise;
* launch: ``global = grid * block`` and ``local = block`` per dimension, from the values the host
  code passes for the kernel's launch tags (blockIdx.* / threadIdx.*), in a 3-D NDRange;

-- and adds checks a phone would fail on: threads per work group and static ``__local`` memory
within the *target's* limits (``max_num_threads``, ``max_shared_memory_per_block``).

Without ``cl_khr_fp16`` on the device (pocl 3.1) fp16 kernels run through
:func:`~.source.emulate_fp16`: fp16 buffers are widened to float32 for the kernel and rounded back
to fp16 (round-to-nearest-even, as ``convert_half`` stores) when read.  Device: the first one found,
or the first whose platform or device name contains ``$LLAMA_AOT_OPENCL_DEVICE``;
``$LLAMA_AOT_OPENCL_FP16=emulate|native`` overrides the automatic choice.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from typing import Any, Sequence

import numpy as np

from runtime_stubs.errors import LlamaAotError

from .capture import Kernel, OpenCLBuild, TensorArg
from .source import emulate_fp16

NO_DRIVER_REASON = "needs an OpenCL driver (pocl-opencl-icd)"

_default = None
_default_error: str | None = None
_default_lock = threading.Lock()


class OpenCLRuntimeError(LlamaAotError):
    """No OpenCL device, a kernel that does not build, or a launch that breaks a limit."""


_SCALAR_TYPES = {"int32": np.int32, "int64": np.int64, "uint32": np.uint32, "uint64": np.uint64,
                 "int16": np.int16, "uint16": np.uint16, "int8": np.int8, "uint8": np.uint8,
                 "float32": np.float32, "float64": np.float64, "float16": np.float16}  # fmt: skip


def _cl():
    try:
        import pyopencl as cl
    except ImportError as e:
        raise OpenCLRuntimeError(f"the PyPI package pyopencl is not installed ({e})") from e
    return cl


class OpenCLDevice:
    """A context and in-order queue on one OpenCL device, with a per-kernel program cache."""

    def __init__(self, name_filter: str | None = None, fp16: str | None = None):
        cl = self.cl = _cl()
        try:
            platforms = cl.get_platforms()
        except cl.Error as e:  # no ICD registered
            raise OpenCLRuntimeError(f"no OpenCL platform ({e})") from e
        name_filter = name_filter if name_filter is not None else os.environ.get("LLAMA_AOT_OPENCL_DEVICE")
        chosen = None
        for p in platforms:
            try:
                devices = p.get_devices()
            except cl.Error:
                continue
            for d in devices:
                label = f"{p.name} {d.name}"
                if name_filter is None or name_filter.lower() in label.lower():
                    chosen = (p, d)
                    break
            if chosen:
                break
        if chosen is None:
            raise OpenCLRuntimeError("no OpenCL device" + (f" matching {name_filter!r}" if name_filter else ""))
        self.platform, self.device = chosen
        self.name = f"{self.platform.name} / {self.device.name}"
        self.extensions = set(self.device.extensions.split())
        self.has_fp16 = "cl_khr_fp16" in self.extensions
        fp16 = fp16 or os.environ.get("LLAMA_AOT_OPENCL_FP16") or "auto"
        if fp16 not in ("auto", "emulate", "native"):
            raise OpenCLRuntimeError(f"fp16 mode must be auto, emulate or native, not {fp16!r}")
        if fp16 == "native" and not self.has_fp16:
            raise OpenCLRuntimeError(f"{self.name} has no cl_khr_fp16")
        self.emulate_fp16 = fp16 == "emulate" or (fp16 == "auto" and not self.has_fp16)
        self.max_work_group_size = int(self.device.max_work_group_size)
        self.local_mem_size = int(self.device.local_mem_size)
        self.context = cl.Context([self.device])
        self.queue = cl.CommandQueue(self.context)
        self._programs: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self.build_seconds = 0.0

    # -- programs --------------------------------------------------------------------------

    def kernel_source(self, kernel: Kernel) -> str:
        return emulate_fp16(kernel.source) if self.emulate_fp16 else kernel.source

    def program_kernel(self, kernel: Kernel):
        """The built ``cl.Kernel`` (cached per source)."""
        import time

        src = self.kernel_source(kernel)
        key = (kernel.name, hashlib.sha256(src.encode()).hexdigest())
        with self._lock:
            if key not in self._programs:
                t0 = time.perf_counter()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # pyopencl's CompilerWarning on a non-empty log
                        prog = self.cl.Program(self.context, src).build()
                except self.cl.Error as e:
                    raise OpenCLRuntimeError(f"building {kernel.name} on {self.name} failed:\n{str(e)[-4000:]}") from e
                self.build_seconds += time.perf_counter() - t0
                self._programs[key] = getattr(prog, kernel.name)
            return self._programs[key]

    # -- running -----------------------------------------------------------------------------

    def check_limits(self, kernel: Kernel, block: Sequence[int], clk=None) -> None:
        threads = int(np.prod(block))
        if kernel.max_threads and threads > kernel.max_threads:
            raise OpenCLRuntimeError(
                f"{kernel.name}: {threads} threads per work group exceed the target's "
                f"max_num_threads {kernel.max_threads}"
            )
        if kernel.max_shared_memory and kernel.local_bytes > kernel.max_shared_memory:
            raise OpenCLRuntimeError(
                f"{kernel.name}: {kernel.local_bytes} bytes of __local memory exceed the target's "
                f"max_shared_memory_per_block {kernel.max_shared_memory}"
            )
        limit = self.max_work_group_size
        if clk is not None:
            wg = clk.get_work_group_info(self.cl.kernel_work_group_info.WORK_GROUP_SIZE, self.device)
            limit = min(limit, int(wg))
        if threads > limit:
            raise OpenCLRuntimeError(
                f"{kernel.name}: {threads} threads per work group exceed {self.name}'s limit {limit}"
            )

    def _upload(self, a: np.ndarray):
        host = np.ascontiguousarray(a.astype(np.float32) if (self.emulate_fp16 and a.dtype == np.float16) else a)
        mf = self.cl.mem_flags
        if host.nbytes == 0:
            return self.cl.Buffer(self.context, mf.READ_WRITE, 4), host
        return self.cl.Buffer(self.context, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=host), host

    def _download(self, buf, host: np.ndarray, like: np.ndarray) -> np.ndarray:
        out = np.empty_like(host)
        if host.nbytes:
            self.cl.enqueue_copy(self.queue, out, buf)
        return out.astype(like.dtype) if out.dtype != like.dtype else out

    def _scalar(self, kernel: Kernel, dtype: str, value):
        if dtype == "float16" and self.emulate_fp16:
            dtype = "float32"
        if dtype not in _SCALAR_TYPES:
            raise OpenCLRuntimeError(f"{kernel.name}: cannot pass a scalar of type {dtype}")
        return _SCALAR_TYPES[dtype](value)

    def launch(self, kernel: Kernel, values: Sequence[Any], grid, block, buffers: Sequence) -> None:
        """Enqueue one kernel; ``values`` per parameter: TensorArg(i) (-> ``buffers[i]``) or a number."""
        if len(values) != len(kernel.params):
            raise OpenCLRuntimeError(f"{kernel.name}: {len(kernel.params)} arguments expected, got {len(values)}")
        if kernel.uses_dyn_shared_memory:
            raise OpenCLRuntimeError(f"{kernel.name}: dynamic shared memory is not supported by the launcher")
        clk = self.program_kernel(kernel)
        self.check_limits(kernel, block, clk)
        for i, (p, v) in enumerate(zip(kernel.params, values)):
            if p.kind == "buffer":
                if not isinstance(v, TensorArg):
                    raise OpenCLRuntimeError(f"{kernel.name}: parameter {p.name} needs an array")
                clk.set_arg(i, buffers[v.index])
            else:
                clk.set_arg(i, self._scalar(kernel, p.dtype, v))
        gsize = tuple(int(g) * int(b) for g, b in zip(grid, block))
        if min(gsize) <= 0:
            return
        self.cl.enqueue_nd_range_kernel(self.queue, clk, gsize, tuple(int(b) for b in block))

    def run(self, kernel: Kernel, args: Sequence[Any], grid=None, block=None) -> list:
        """Run one kernel with ``args`` in parameter order (arrays for buffers, numbers for scalars);
        returns the arguments with every array read back (new arrays).  Without ``grid``/``block``
        the launch comes from the kernel's thread extents and its scalar arguments."""
        if grid is None or block is None:
            scalars = {p.name: a for p, a in zip(kernel.params, args) if p.kind == "scalar"}
            grid, block = kernel.launch_dims(scalars)
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        values, k = [], 0
        for p, a in zip(kernel.params, args):
            if isinstance(a, np.ndarray):
                _check_dtype(kernel, p, a)
                values.append(TensorArg(k))
                k += 1
            else:
                values.append(a)
        with self._lock:
            pairs = [self._upload(a) for a in arrays]
        self.launch(kernel, values, grid, block, [b for b, _ in pairs])
        self.queue.finish()
        back = iter([self._download(b, h, a) for (b, h), a in zip(pairs, arrays)])
        return [next(back) if isinstance(a, np.ndarray) else a for a in args]

    def run_function(self, build: OpenCLBuild, name: str, args: Sequence[Any]) -> list:
        """Replay host function ``name`` of ``build``: every kernel it launches, in order, with the
        arguments and launch dimensions its host code computes for ``args`` (arrays for tensors,
        numbers for scalars, in the PrimFunc's order).  Returns ``args`` with every array read back
        (outputs included: pass arrays of the output shape, as the VM's destination-passing does)."""
        fn = build.function(name)
        args = list(args)
        plan = fn.resolve(args)
        for call, values, _, _ in plan:
            kernel = build.kernel(call.kernel)
            for p, v in zip(kernel.params, values):
                if isinstance(v, TensorArg):
                    _check_dtype(kernel, p, args[v.index])
        pairs = {i: self._upload(a) for i, a in enumerate(args) if isinstance(a, np.ndarray)}
        buffers = {i: b for i, (b, _) in pairs.items()}
        for call, values, grid, block in plan:
            self.launch(build.kernel(call.kernel), values, grid, block, buffers)
        self.queue.finish()
        return [self._download(*pairs[i], a) if i in pairs else a for i, a in enumerate(args)]


def _check_dtype(kernel: Kernel, p, a: np.ndarray) -> None:
    if p.kind != "buffer":
        raise OpenCLRuntimeError(f"{kernel.name}: parameter {p.name} is a scalar, got an array")
    if np.dtype(a.dtype) != np.dtype(p.dtype):
        raise OpenCLRuntimeError(f"{kernel.name}: parameter {p.name} is {p.dtype}, got a {a.dtype} array")


def default_device() -> OpenCLDevice | None:
    """A process-wide device, or None when no OpenCL driver/device (or pyopencl) is available."""
    global _default, _default_error
    with _default_lock:
        if _default is None and _default_error is None:
            try:
                _default = OpenCLDevice()
            except OpenCLRuntimeError as e:
                _default_error = str(e)
        return _default


def unavailable_reason() -> str | None:
    """Why :func:`default_device` is None (None when a device exists)."""
    if default_device() is not None:
        return None
    return NO_DRIVER_REASON + (f": {_default_error}" if _default_error else "")


def _device(device: OpenCLDevice | None) -> OpenCLDevice:
    dev = device or default_device()
    if dev is None:
        raise OpenCLRuntimeError(unavailable_reason() or NO_DRIVER_REASON)
    return dev


def run_kernel(kernel: Kernel, args, device: OpenCLDevice | None = None, grid=None, block=None):
    """Run one kernel.  ``args``: a list in parameter order or a dict by parameter name (a buffer
    may be named without its ``_ptr`` suffix).  Returns the same shape (list or dict) with arrays
    read back."""
    dev = _device(device)
    if isinstance(args, dict):
        ordered, keys = [], []
        for p in kernel.params:
            key = p.name if p.name in args else p.name[:-4] if p.name.endswith("_ptr") and p.name[:-4] in args else None
            if key is None:
                raise OpenCLRuntimeError(f"{kernel.name}: no value for parameter {p.name!r} (have {sorted(args)})")
            ordered.append(args[key])
            keys.append(key)
        out = dev.run(kernel, ordered, grid, block)
        return dict(zip(keys, out))
    return dev.run(kernel, list(args), grid, block)


def run_function(build: OpenCLBuild, name: str, args: Sequence[Any], device: OpenCLDevice | None = None) -> list:
    """:meth:`OpenCLDevice.run_function` on ``device`` (default: :func:`default_device`)."""
    return _device(device).run_function(build, name, args)
