"""Errors of the Vulkan back end."""

from __future__ import annotations

from runtime_stubs.errors import LlamaAotError


class VulkanCodegenError(LlamaAotError):
    """A kernel the Vulkan back end cannot compile for the given target (names the kernel)."""


class VulkanToolchainError(LlamaAotError):
    """glslangValidator / spirv-val / a C++ compiler is missing or failed."""


class VulkanRuntimeError(LlamaAotError):
    """The Python launcher could not run a kernel (no driver, missing feature, bad arguments)."""
