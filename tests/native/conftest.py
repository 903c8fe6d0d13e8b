"""Fixtures for the on-device runtime tests: native builds (cached by runtime_stubs.native_build),
toy packages (cached under build/native-toy/<hash>/), and the Python-runtime reference.

Missing tools (cmake, g++-aarch64-linux-gnu, qemu-user, a JDK) skip the tests that need them;
set LLAMA_AOT_REQUIRE_NATIVE=1 (CI) to turn those skips into failures.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# the project runs pytest with --import-mode=importlib (no sys.path edits): make this directory's
# helper modules importable by plain name for conftest and the test modules
sys.path.insert(0, str(Path(__file__).resolve().parent))

import toy_package  # noqa: E402
from native_helpers import MAX_TOKENS, PROMPT, build, native_build, toy  # noqa: E402


@pytest.fixture(scope="session")
def native_x86():
    if native_build.host_arch() != "x86_64":
        pytest.skip("the x86_64 tests run on an x86_64 host")
    return build("x86_64")


@pytest.fixture(scope="session")
def native_aarch64():
    return build("aarch64")


@pytest.fixture(scope="session")
def toy_x86():
    return toy("x86_64")


@pytest.fixture(scope="session")
def reference(toy_x86):
    """(tokens, logits rows) from TVM's Python runtime on the x86_64 toy package."""
    return toy_package.PythonReference(toy_x86).generate(PROMPT, MAX_TOKENS)
