"""Vulkan back end: lowered TIR kernels -> GLSL 450 -> SPIR-V, packaged as TVM's "vulkan" module.

Usage::

    from targets.backends import vulkan as vk
    vk.register()                                   # installs target.build.vulkan
    target = tvm.target.Target(vk.lavapipe_target(), host={"kind": "llvm"})
    ex = tvm.compile(mod, target=target)            # host llvm module importing a "vulkan" module
    ex.export_library("model.so")                   # embeds the SPIR-V like any device module

See docs/vulkan.md.
"""

from .build import build_vulkan, compile_kernels, kernels_from_module, original_errors, register
from .errors import VulkanCodegenError, VulkanRuntimeError, VulkanToolchainError
from .glsl import GLSLKernel, ParamInfo, kernel_to_glsl
from .module_format import (
    FLAG_USE_UBO,
    FunctionInfo,
    VulkanShader,
    parse_vulkan_module,
    serialize_vulkan_module,
    spirv_local_size,
)
from .runtime_module import (
    create_vulkan_module,
    find_vulkan_modules,
    module_metadata,
    module_payload,
    register_vulkan_loader,
)
from .spirv import compile_glsl, toolchain_available, validate_spirv
from .target import VulkanCaps, lavapipe_target, vk_api_version

__all__ = [
    "FLAG_USE_UBO",
    "FunctionInfo",
    "GLSLKernel",
    "ParamInfo",
    "VulkanCaps",
    "VulkanCodegenError",
    "VulkanRuntimeError",
    "VulkanShader",
    "VulkanToolchainError",
    "build_vulkan",
    "compile_glsl",
    "compile_kernels",
    "create_vulkan_module",
    "find_vulkan_modules",
    "kernel_to_glsl",
    "kernels_from_module",
    "lavapipe_target",
    "module_metadata",
    "module_payload",
    "original_errors",
    "parse_vulkan_module",
    "register",
    "register_vulkan_loader",
    "serialize_vulkan_module",
    "spirv_local_size",
    "toolchain_available",
    "validate_spirv",
    "vk_api_version",
]
