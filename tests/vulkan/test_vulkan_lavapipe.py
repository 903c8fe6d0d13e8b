"""Kernels compiled through tvm.compile (our target.build.vulkan) and run on a Vulkan device
(lavapipe here) with the Python launcher, compared with numpy."""

from __future__ import annotations

import pytest

from vulkan_test_kernels import CASES, compile_case


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_runs_on_device(name, device):
    case = CASES[name]
    _, kernels = compile_case(case)
    case.check(kernels, device)
