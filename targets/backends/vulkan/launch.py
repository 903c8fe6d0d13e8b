"""Run one compiled SPIR-V kernel on a Vulkan device from Python (PyPI ``vulkan``, cffi).

A test harness, not the runtime: it follows the calling convention of TVM's Vulkan runtime so that
what passes here is what the C++ runtime will see --

* buffer arguments: storage buffers in descriptor set 0, bindings 0..n-1 in parameter order;
* scalar arguments: push constants, 8 bytes each in parameter order (int32/float32 in the low 4
  bytes), or, when the shader flag has bit 0 set, a uniform buffer at binding n with that layout;
* launch arguments: the values of ``FunctionInfo.launch_param_tags`` (blockIdx.* give the grid,
  threadIdx.* must match the shader's workgroup size), as the host code passes them.

Each :meth:`VulkanDevice.run` creates and destroys its own buffers and pipeline and waits for the
result: slow, simple, leak-free.  Device: the first one found, or the first whose name contains
``$LLAMA_AOT_VULKAN_DEVICE`` (e.g. "llvmpipe").
"""

from __future__ import annotations

import os
import struct
import threading
from typing import Sequence

import numpy as np

from .errors import VulkanRuntimeError
from .module_format import FLAG_FOLDED_GRID, FLAG_USE_UBO, FunctionInfo, fold_grid, spirv_local_size

NO_DRIVER_REASON = "needs Vulkan driver (mesa-vulkan-drivers)"

_default = None
_default_lock = threading.Lock()
_default_error: str | None = None


def _vk():
    try:
        import vulkan as vk  # PyPI "vulkan" (cffi binding)
    except (ImportError, OSError) as e:  # OSError: libvulkan.so.1 missing
        raise VulkanRuntimeError(f"the 'vulkan' Python package / libvulkan is unavailable: {e}") from e
    return vk


def _check(vk, what, fn, *args):
    try:
        return fn(*args)
    except vk.VkError as e:
        raise VulkanRuntimeError(f"{what} failed: {type(e).__name__}") from e


class VulkanDevice:
    """A logical device with one compute queue and every shader feature the device offers enabled."""

    def __init__(self, name_filter: str | None = None):
        vk = self.vk = _vk()
        ffi = self.ffi = vk.ffi
        self._closed = False
        app = vk.VkApplicationInfo(
            pApplicationName="llama-aot", applicationVersion=1, pEngineName="llama-aot", engineVersion=1,
            apiVersion=vk.VK_MAKE_VERSION(1, 3, 0),
        )  # fmt: skip
        try:
            self.instance = vk.vkCreateInstance(vk.VkInstanceCreateInfo(pApplicationInfo=app), None)
        except vk.VkError as e:
            raise VulkanRuntimeError(f"vkCreateInstance failed ({type(e).__name__}): no Vulkan driver?") from e
        try:
            devices = vk.vkEnumeratePhysicalDevices(self.instance)
        except vk.VkError:
            devices = []
        name_filter = name_filter if name_filter is not None else os.environ.get("LLAMA_AOT_VULKAN_DEVICE")
        chosen = None
        for pd in devices:
            props = vk.vkGetPhysicalDeviceProperties(pd)
            dname = props.deviceName if isinstance(props.deviceName, str) else ffi.string(props.deviceName).decode()
            if name_filter is None or name_filter.lower() in dname.lower():
                chosen, self.properties, self.name = pd, props, dname
                break
        if chosen is None:
            vk.vkDestroyInstance(self.instance, None)
            raise VulkanRuntimeError(
                "no Vulkan physical device" + (f" matching {name_filter!r}" if name_filter else "")
            )
        self.physical = chosen
        self.api_version = self.properties.apiVersion
        limits = self.properties.limits
        self.max_workgroup_invocations = limits.maxComputeWorkGroupInvocations
        self.max_workgroup_size = tuple(limits.maxComputeWorkGroupSize)
        self.max_workgroup_count = tuple(limits.maxComputeWorkGroupCount)
        self.max_shared_memory = limits.maxComputeSharedMemorySize
        self.max_push_constants = limits.maxPushConstantsSize

        # subgroup properties (core 1.1)
        sub = ffi.new("VkPhysicalDeviceSubgroupProperties*")
        sub.sType = vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES
        p2 = ffi.new("VkPhysicalDeviceProperties2*")
        p2.sType = vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2
        p2.pNext = sub
        vk.vkGetPhysicalDeviceProperties2(chosen, p2)
        self.subgroup_size = sub.subgroupSize
        self.subgroup_operations = sub.supportedOperations

        # features: query the 1.0/1.1/1.2 sets, enable what the device has (fp16, int8, 8/16-bit storage...)
        f11 = ffi.new("VkPhysicalDeviceVulkan11Features*")
        f11.sType = vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES
        f12 = ffi.new("VkPhysicalDeviceVulkan12Features*")
        f12.sType = vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES
        f11.pNext = f12
        f2 = ffi.new("VkPhysicalDeviceFeatures2*")
        f2.sType = vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2
        has12 = self.api_version >= vk.VK_MAKE_VERSION(1, 2, 0)  # Vulkan11/12Features structs are 1.2+
        f2.pNext = f11 if has12 else ffi.NULL
        vk.vkGetPhysicalDeviceFeatures2(chosen, f2)
        e11 = ffi.new("VkPhysicalDeviceVulkan11Features*")
        e11.sType = f11.sType
        e12 = ffi.new("VkPhysicalDeviceVulkan12Features*")
        e12.sType = f12.sType
        e11.pNext = e12
        ef = ffi.new("VkPhysicalDeviceFeatures2*")
        ef.sType = f2.sType
        ef.pNext = e11 if has12 else ffi.NULL
        self.features = {}
        for src, dst, names in (
            (f2.features, ef.features, ("shaderInt64", "shaderInt16", "shaderFloat64")),
            (f11, e11, ("storageBuffer16BitAccess", "uniformAndStorageBuffer16BitAccess", "storagePushConstant16")),
            (f12, e12, ("shaderFloat16", "shaderInt8", "storageBuffer8BitAccess",
                        "uniformAndStorageBuffer8BitAccess", "storagePushConstant8")),
        ):  # fmt: skip
            for n in names:
                v = bool(getattr(src, n))
                setattr(dst, n, 1 if v else 0)
                self.features[n] = v

        qf = vk.vkGetPhysicalDeviceQueueFamilyProperties(chosen)
        self.queue_family = next(
            (i for i, q in enumerate(qf) if q.queueFlags & vk.VK_QUEUE_COMPUTE_BIT), None
        )
        if self.queue_family is None:
            raise VulkanRuntimeError(f"{self.name} has no compute queue")
        prio = ffi.new("float[]", [1.0])
        qci = ffi.new("VkDeviceQueueCreateInfo*")
        qci.sType = vk.VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO
        qci.queueFamilyIndex = self.queue_family
        qci.queueCount = 1
        qci.pQueuePriorities = prio
        dci = ffi.new("VkDeviceCreateInfo*")
        dci.sType = vk.VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO
        dci.pNext = ef  # VkPhysicalDeviceFeatures2 chain (pEnabledFeatures stays NULL)
        dci.queueCreateInfoCount = 1
        dci.pQueueCreateInfos = qci
        dev = ffi.new("VkDevice*")
        r = vk.lib.vkCreateDevice(chosen, dci, ffi.NULL, dev)
        if r != vk.VK_SUCCESS:
            raise VulkanRuntimeError(f"vkCreateDevice failed ({r}) on {self.name}")
        self.device = dev[0]
        self.queue = vk.vkGetDeviceQueue(self.device, self.queue_family, 0)
        self.pool = vk.vkCreateCommandPool(
            self.device,
            vk.VkCommandPoolCreateInfo(
                flags=vk.VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT, queueFamilyIndex=self.queue_family
            ),
            None,
        )
        mp = vk.vkGetPhysicalDeviceMemoryProperties(chosen)
        want = vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | vk.VK_MEMORY_PROPERTY_HOST_COHERENT_BIT
        self._host_types = [i for i in range(mp.memoryTypeCount) if (mp.memoryTypes[i].propertyFlags & want) == want]
        if not self._host_types:
            raise VulkanRuntimeError(f"{self.name} has no host-visible coherent memory")
        self._lock = threading.Lock()

    # -- resources ------------------------------------------------------------------------------

    def _buffer(self, size: int, usage: int, data: bytes | None):
        vk = self.vk
        size = max(4, (size + 3) // 4 * 4)
        buf = vk.vkCreateBuffer(
            self.device,
            vk.VkBufferCreateInfo(size=size, usage=usage, sharingMode=vk.VK_SHARING_MODE_EXCLUSIVE),
            None,
        )
        req = vk.vkGetBufferMemoryRequirements(self.device, buf)
        mtype = next((i for i in self._host_types if req.memoryTypeBits & (1 << i)), None)
        if mtype is None:
            raise VulkanRuntimeError("no host-visible memory type for a storage buffer")
        mem = vk.vkAllocateMemory(
            self.device, vk.VkMemoryAllocateInfo(allocationSize=req.size, memoryTypeIndex=mtype), None
        )
        vk.vkBindBufferMemory(self.device, buf, mem, 0)
        ptr = vk.vkMapMemory(self.device, mem, 0, size, 0)  # sizes, never VK_WHOLE_SIZE (overflows)
        init = bytes(data or b"")
        ptr[: len(init)] = init
        if len(init) < size:
            ptr[len(init) : size] = bytes(size - len(init))
        vk.vkUnmapMemory(self.device, mem)
        return buf, mem, size

    def _read(self, mem, nbytes: int) -> bytes:
        vk = self.vk
        ptr = vk.vkMapMemory(self.device, mem, 0, max(4, (nbytes + 3) // 4 * 4), 0)
        out = bytes(ptr[:nbytes])  # vkMapMemory returns a cffi buffer of the mapped size
        vk.vkUnmapMemory(self.device, mem)
        return out

    # -- running a kernel ---------------------------------------------------------------------

    def run(
        self,
        spirv: Sequence[int],
        info: FunctionInfo,
        args: Sequence,
        launch_args: Sequence[int],
        flag: int = 0,
        subgroup_size: int = 0,
        timeout_s: float = 120.0,
    ) -> list[np.ndarray]:
        """Run a kernel; returns every buffer argument read back (new arrays, same dtype/shape).

        ``args`` follow ``info.arg_types``: numpy arrays for "handle", Python numbers for scalars.
        ``launch_args`` follow ``info.launch_param_tags``.  ``subgroup_size``: lanes the kernel's
        warp-synchronous code assumes (the target's thread_warp_size); checked against the device.
        """
        vk, ffi = self.vk, self.ffi
        if len(args) != len(info.arg_types):
            raise VulkanRuntimeError(f"{info.name}: {len(info.arg_types)} arguments expected, got {len(args)}")
        if len(launch_args) != len(info.launch_param_tags):
            raise VulkanRuntimeError(
                f"{info.name}: launch args {list(launch_args)} do not match tags {info.launch_param_tags}"
            )
        if subgroup_size > self.subgroup_size:
            raise VulkanRuntimeError(
                f"{info.name} assumes subgroups of >= {subgroup_size} lanes (target thread_warp_size) but "
                f"{self.name} has {self.subgroup_size}"
            )
        grid, block = [1, 1, 1], [1, 1, 1]
        for tag, v in zip(info.launch_param_tags, launch_args):
            if tag.startswith("blockIdx."):
                grid["xyz".index(tag[-1])] = int(v)
            elif tag.startswith("threadIdx."):
                block["xyz".index(tag[-1])] = int(v)
        local = spirv_local_size(spirv)
        if local is not None and tuple(block) != tuple(local):
            raise VulkanRuntimeError(f"{info.name}: threadIdx extents {block} != shader workgroup size {local}")
        if flag & FLAG_FOLDED_GRID and grid[1] == 1:
            grid[0], grid[1] = fold_grid(grid[0], self.max_workgroup_count[0])
        for d in range(3):
            if grid[d] > self.max_workgroup_count[d]:
                raise VulkanRuntimeError(
                    f"{info.name}: grid {grid} exceeds maxComputeWorkGroupCount {self.max_workgroup_count}"
                )

        buffers, pods = [], []
        for t, a in zip(info.arg_types, args):
            if t == "handle":
                if not isinstance(a, np.ndarray):
                    raise VulkanRuntimeError(f"{info.name}: buffer argument must be a numpy array, got {type(a)}")
                buffers.append(np.ascontiguousarray(a))
            else:
                pods.append((t, a))
        pc = b"".join(_pack_scalar(t, v) for t, v in pods)
        use_ubo = bool(flag & FLAG_USE_UBO)

        with self._lock:
            created = []  # (destroy_fn, handle) in creation order
            try:
                bufs = []
                for a in buffers:
                    b, m, size = self._buffer(a.nbytes, vk.VK_BUFFER_USAGE_STORAGE_BUFFER_BIT, a.tobytes())
                    created += [(vk.vkFreeMemory, m), (vk.vkDestroyBuffer, b)]
                    bufs.append((b, m, size, vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER))
                if use_ubo:
                    b, m, size = self._buffer(len(pc), vk.VK_BUFFER_USAGE_UNIFORM_BUFFER_BIT, pc)
                    created += [(vk.vkFreeMemory, m), (vk.vkDestroyBuffer, b)]
                    bufs.append((b, m, size, vk.VK_DESCRIPTOR_TYPE_UNIFORM_BUFFER))

                bindings = [
                    vk.VkDescriptorSetLayoutBinding(
                        binding=i, descriptorType=dt, descriptorCount=1, stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT
                    )
                    for i, (_, _, _, dt) in enumerate(bufs)
                ]
                dsl = vk.vkCreateDescriptorSetLayout(
                    self.device, vk.VkDescriptorSetLayoutCreateInfo(pBindings=bindings), None
                )
                created.append((vk.vkDestroyDescriptorSetLayout, dsl))
                ranges = []
                if pc and not use_ubo:
                    ranges = [vk.VkPushConstantRange(stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT, offset=0, size=len(pc))]
                layout = vk.vkCreatePipelineLayout(
                    self.device,
                    vk.VkPipelineLayoutCreateInfo(pSetLayouts=[dsl], pPushConstantRanges=ranges or None),
                    None,
                )
                created.append((vk.vkDestroyPipelineLayout, layout))
                code = struct.pack(f"<{len(spirv)}I", *spirv)
                shader = vk.vkCreateShaderModule(
                    self.device, vk.VkShaderModuleCreateInfo(codeSize=len(code), pCode=code), None
                )
                created.append((vk.vkDestroyShaderModule, shader))
                stage = vk.VkPipelineShaderStageCreateInfo(
                    stage=vk.VK_SHADER_STAGE_COMPUTE_BIT, module=shader, pName="main"
                )
                pipelines = _check(
                    vk, f"compiling {info.name}", vk.vkCreateComputePipelines, self.device, None, 1,
                    [vk.VkComputePipelineCreateInfo(stage=stage, layout=layout)], None,
                )  # fmt: skip
                pipeline = pipelines[0]
                created.append((vk.vkDestroyPipeline, pipeline))

                dpool = None
                if bufs:
                    sizes = {}
                    for _, _, _, dt in bufs:
                        sizes[dt] = sizes.get(dt, 0) + 1
                    dpool = vk.vkCreateDescriptorPool(
                        self.device,
                        vk.VkDescriptorPoolCreateInfo(
                            maxSets=1,
                            pPoolSizes=[vk.VkDescriptorPoolSize(type=t, descriptorCount=n) for t, n in sizes.items()],
                        ),
                        None,
                    )
                    created.append((vk.vkDestroyDescriptorPool, dpool))
                    dset = vk.vkAllocateDescriptorSets(
                        self.device, vk.VkDescriptorSetAllocateInfo(descriptorPool=dpool, pSetLayouts=[dsl])
                    )[0]
                    writes = [
                        vk.VkWriteDescriptorSet(
                            dstSet=dset, dstBinding=i, descriptorCount=1, descriptorType=dt,
                            pBufferInfo=[vk.VkDescriptorBufferInfo(buffer=b, offset=0, range=size)],
                        )  # fmt: skip
                        for i, (b, _, size, dt) in enumerate(bufs)
                    ]
                    vk.vkUpdateDescriptorSets(self.device, len(writes), writes, 0, None)

                cmd = vk.vkAllocateCommandBuffers(
                    self.device,
                    vk.VkCommandBufferAllocateInfo(
                        commandPool=self.pool, level=vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY, commandBufferCount=1
                    ),
                )[0]
                created.append((lambda dev, c, alloc: vk.vkFreeCommandBuffers(dev, self.pool, 1, [c]), cmd))
                vk.vkBeginCommandBuffer(
                    cmd, vk.VkCommandBufferBeginInfo(flags=vk.VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT)
                )
                vk.vkCmdBindPipeline(cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, pipeline)
                if bufs:
                    vk.vkCmdBindDescriptorSets(cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, layout, 0, 1, [dset], 0, None)
                if pc and not use_ubo:
                    pcbuf = ffi.new("char[]", pc)
                    vk.vkCmdPushConstants(cmd, layout, vk.VK_SHADER_STAGE_COMPUTE_BIT, 0, len(pc), pcbuf)
                if grid[0] * grid[1] * grid[2] > 0:
                    vk.vkCmdDispatch(cmd, *grid)
                barrier = vk.VkMemoryBarrier(
                    srcAccessMask=vk.VK_ACCESS_SHADER_WRITE_BIT, dstAccessMask=vk.VK_ACCESS_HOST_READ_BIT
                )
                vk.vkCmdPipelineBarrier(
                    cmd, vk.VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, vk.VK_PIPELINE_STAGE_HOST_BIT, 0,
                    1, [barrier], 0, None, 0, None,
                )  # fmt: skip
                vk.vkEndCommandBuffer(cmd)
                fence = vk.vkCreateFence(self.device, vk.VkFenceCreateInfo(), None)
                created.append((vk.vkDestroyFence, fence))
                vk.vkQueueSubmit(self.queue, 1, [vk.VkSubmitInfo(pCommandBuffers=[cmd])], fence)
                _check(vk, f"running {info.name}", vk.vkWaitForFences, self.device, 1, [fence], vk.VK_TRUE,
                       int(timeout_s * 1e9))  # fmt: skip
                out = []
                for a, (b, m, _, _) in zip(buffers, bufs):
                    out.append(np.frombuffer(self._read(m, a.nbytes), dtype=a.dtype).reshape(a.shape).copy())
                return out
            finally:
                for destroy, h in reversed(created):
                    destroy(self.device, h, None)

    def close(self):
        if self._closed:
            return
        self._closed = True
        vk = self.vk
        vk.vkDeviceWaitIdle(self.device)
        vk.vkDestroyCommandPool(self.device, self.pool, None)
        vk.vkDestroyDevice(self.device, None)
        vk.vkDestroyInstance(self.instance, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _pack_scalar(dtype: str, value) -> bytes:
    """One scalar as TVM's Vulkan runtime packs it (ArgUnion64: 8 bytes, value in the low bytes)."""
    if dtype in ("int32", "bool"):
        return struct.pack("<iI", int(value), 0)
    if dtype == "uint32":
        return struct.pack("<II", int(value) & 0xFFFFFFFF, 0)
    if dtype == "int64":
        return struct.pack("<q", int(value))
    if dtype == "uint64":
        return struct.pack("<Q", int(value) & (2**64 - 1))
    if dtype == "float32":
        return struct.pack("<fI", float(value), 0)
    if dtype == "float64":
        return struct.pack("<d", float(value))
    raise VulkanRuntimeError(f"cannot pass a scalar of type {dtype}")


def default_device() -> VulkanDevice | None:
    """A process-wide device, or None when no Vulkan driver/device is available."""
    global _default, _default_error
    with _default_lock:
        if _default is None and _default_error is None:
            try:
                _default = VulkanDevice()
            except VulkanRuntimeError as e:
                _default_error = str(e)
        return _default


def unavailable_reason() -> str | None:
    """Why :func:`default_device` is None (None when a device exists)."""
    return None if default_device() is not None else (_default_error or NO_DRIVER_REASON)


def launch(
    spirv: Sequence[int],
    info: FunctionInfo,
    args: Sequence,
    launch_args: Sequence[int],
    flag: int = 0,
    subgroup_size: int = 0,
    device: VulkanDevice | None = None,
) -> list[np.ndarray]:
    """Run one kernel on ``device`` (default: :func:`default_device`); see :meth:`VulkanDevice.run`."""
    dev = device or default_device()
    if dev is None:
        raise VulkanRuntimeError(unavailable_reason() or NO_DRIVER_REASON)
    return dev.run(spirv, info, args, launch_args, flag=flag, subgroup_size=subgroup_size)


def run_kernel(kernel, args, device: VulkanDevice | None = None):
    """Run a :class:`~.glsl.GLSLKernel` (from :func:`~.build.compile_kernels`, or from module
    metadata via :func:`~.build.kernels_from_module`); the launch arguments are computed from its
    scalar arguments as the host code would compute them.

    ``args``: a list in the kernel's parameter order, or a dict by parameter name (a buffer may be
    named without its ``_ptr`` suffix).  Note that device kernels do not keep the parameter order
    of the PrimFunc they come from (TVM sorts the buffers), so prefer the dict.  Returns the buffer
    arguments read back: a list (all parameters' positions, scalars included as given) or a dict.
    """
    if isinstance(args, dict):
        ordered, keys = [], []
        for p in kernel.params:
            key = p.name if p.name in args else p.name[:-4] if p.name.endswith("_ptr") and p.name[:-4] in args else None
            if key is None:
                raise VulkanRuntimeError(f"{kernel.name}: no value for parameter {p.name!r} (have {sorted(args)})")
            ordered.append(args[key])
            keys.append(key)
        out = run_kernel(kernel, ordered, device)
        return {k: v for k, v, p in zip(keys, out, kernel.params) if p.kind == "buffer"}
    scalars = {p.name: a for p, a in zip(kernel.params, args) if p.kind == "scalar"}
    bufs = launch(
        kernel.spirv, kernel.function_info, args, kernel.launch_args(scalars), kernel.flag,
        kernel.subgroup_size, device,
    )  # fmt: skip
    it = iter(bufs)
    return [next(it) if p.kind == "buffer" else a for p, a in zip(kernel.params, args)]
