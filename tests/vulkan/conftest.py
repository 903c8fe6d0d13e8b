"""Fixtures of the Vulkan back-end tests.

Three tiers, each skipped (with its reason) only when what it needs is missing:
* pure Python (module format) -- always;
* compile (GLSL -> SPIR-V, spirv-val): glslang-tools + spirv-tools;
* run on a Vulkan device (lavapipe in CI): mesa-vulkan-drivers + PyPI ``vulkan``.
"""

from __future__ import annotations

import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
for _p in (_ROOT, _HERE):  # the repository (targets.*) and vulkan_test_kernels
    if _p not in sys.path:
        sys.path.insert(0, _p)

NO_DRIVER = "needs Vulkan driver (mesa-vulkan-drivers)"
NO_TOOLS = "needs glslangValidator and spirv-val (apt-get install glslang-tools spirv-tools)"


@pytest.fixture(scope="session")
def vk():
    """The back end, registered as target.build.vulkan."""
    from targets.backends import vulkan

    vulkan.register()
    return vulkan


@pytest.fixture(scope="session")
def toolchain(vk):
    if not vk.toolchain_available():
        pytest.skip(NO_TOOLS)
    return True


@pytest.fixture(scope="session")
def device(toolchain):
    try:
        import vulkan  # noqa: F401  PyPI cffi binding
    except ImportError:
        pytest.skip("needs the PyPI 'vulkan' package (pip install vulkan)")
    except OSError:  # the binding is there but libvulkan.so.1 is not
        pytest.skip(NO_DRIVER)
    from targets.backends.vulkan import launch

    dev = launch.default_device()
    if dev is None:
        pytest.skip(NO_DRIVER)
    return dev
