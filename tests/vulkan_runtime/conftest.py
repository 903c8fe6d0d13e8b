"""Fixtures of the Vulkan runtime tests (runtime_stubs/vulkan: C++ device API + module loader).

Kernels are compiled by targets.backends.vulkan (GLSL -> SPIR-V) through ``tvm.compile``, exported
with ``export_library``, loaded back with ``tvm.runtime.load_module`` and run by the plugin on a
Vulkan device (Mesa lavapipe in CI).  Tests that need a device skip with NO_DEVICE when there is
none; tests that compile kernels skip when glslangValidator / spirv-val are missing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent.parent
for _p in (str(_ROOT), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

NO_DEVICE = "needs a Vulkan driver (mesa-vulkan-drivers)"
NO_TOOLS = "needs glslangValidator and spirv-val (apt-get install glslang-tools spirv-tools)"


@pytest.fixture(scope="session")
def vkrt():
    """The runtime plugin, built (cached) and loaded into this process."""
    from runtime_stubs import vulkan

    vulkan.load_plugin()
    return vulkan


@pytest.fixture(scope="session")
def dev(vkrt):
    """tvm.runtime.vulkan(0), or skip when there is no Vulkan device."""
    if vkrt.unavailable_reason() is not None:
        pytest.skip(NO_DEVICE)
    import tvm

    return tvm.runtime.vulkan(0)


@pytest.fixture(scope="session")
def vkb(vkrt):
    """The code generator (target.build.vulkan), registered; skip without glslang/spirv-val."""
    from targets.backends import vulkan

    vulkan.register()
    if not vulkan.toolchain_available():
        pytest.skip(NO_TOOLS)
    return vulkan


@pytest.fixture(scope="session")
def libdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vulkan_runtime_libs")
