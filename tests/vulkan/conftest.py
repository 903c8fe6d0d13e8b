"""Fixtures of the Vulkan back-end tests.

Three tiers, each skipped (with its reason) only when what it needs is missing:
* pure Python (module format) -- always;
* compile (GLSL -> SPIR-V, spirv-val): glslang-tools + spirv-tools (``toolchain``);
* run on a Vulkan device (lavapipe in CI): mesa-vulkan-drivers + PyPI ``vulkan`` (``device``).
"""

from __future__ import annotations

import os
import sys

import pytest

from vulkan_support import NO_DEVICE, toolchain, vk  # noqa: F401  shared fixtures

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # vulkan_test_kernels
    sys.path.insert(0, _HERE)


@pytest.fixture(scope="session")
def device(toolchain):
    """targets.backends.vulkan.launch's device (through the PyPI cffi binding)."""
    try:
        import vulkan  # noqa: F401  PyPI cffi binding
    except ImportError:
        pytest.skip("needs the PyPI 'vulkan' package (pip install vulkan)")
    except OSError:  # the binding is there but libvulkan.so.1 is not
        pytest.skip(NO_DEVICE)
    from targets.backends.vulkan import launch

    dev = launch.default_device()
    if dev is None:
        pytest.skip(NO_DEVICE)
    return dev
