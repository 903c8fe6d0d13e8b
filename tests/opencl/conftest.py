"""Fixtures of the OpenCL back-end tests.

Two tiers, each skipped (with its reason) only when what it needs is missing:
* compile and inspect (TVM's OpenCL codegen, the captured TIR, clang's OpenCL front end) -- always,
  the clang syntax check only where a clang is installed (pocl-opencl-icd pulls one in);
* run on an OpenCL device (pocl's CPU device in CI): Debian pocl-opencl-icd + PyPI pyopencl.
"""

from __future__ import annotations

import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
for _p in (_ROOT, _HERE):  # the repository (targets.*, compiler.*) and opencl_cases
    if _p not in sys.path:
        sys.path.insert(0, _p)

NO_DRIVER = "needs an OpenCL driver (pocl-opencl-icd)"


@pytest.fixture(scope="session")
def device():
    """The OpenCL device the kernels run on (pocl here)."""
    from targets.backends.opencl import launch

    dev = launch.default_device()
    if dev is None:
        pytest.skip(NO_DRIVER)
    return dev


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)
