"""Fixtures of the Vulkan runtime tests (runtime_stubs/vulkan: C++ device API + module loader).

Kernels are compiled by targets.backends.vulkan (GLSL -> SPIR-V) through ``tvm.compile``, exported
with ``export_library``, loaded back with ``tvm.runtime.load_module`` and run by the plugin on a
Vulkan device (Mesa lavapipe in CI).  Tests that need a device (``dev``) skip when there is none;
tests that compile kernels (``vkb``) skip when glslangValidator / spirv-val are missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vulkan_support import dev, toolchain, vk, vkb, vkrt  # noqa: F401  shared fixtures

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # vkrt_helpers
    sys.path.insert(0, _HERE)


@pytest.fixture(scope="session")
def libdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vulkan_runtime_libs")
