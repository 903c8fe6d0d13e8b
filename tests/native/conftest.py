"""Fixtures for the on-device runtime tests: native builds (cached by runtime_stubs.native_build),
packages written by the real compiler from one small random checkpoint, and the reference run of
TVM's Python runtime (runtime_stubs.engine.Engine) on the host package.

Missing tools (cmake, g++-aarch64-linux-gnu, qemu-user, clang/lld, a JDK) skip the tests that need
them; set LLAMA_AOT_REQUIRE_NATIVE=1 (CI) to turn those skips into failures.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# the project runs pytest with --import-mode=importlib (no sys.path edits): make this directory's
# helper modules importable by plain name for conftest and the test modules
sys.path.insert(0, str(Path(__file__).resolve().parent))

from native_helpers import (  # noqa: E402
    ANDROID_X86_64,
    MAX_TOKENS,
    PACKAGE_OPTIONS,
    PHONE_SOC,
    PROMPT,
    build,
    engine_reference,
    native_build,
    need_phone_toolchain,
)



@pytest.fixture(scope="session")
def native_x86():
    if native_build.host_arch() != "x86_64":
        pytest.skip("the x86_64 tests run on an x86_64 host")
    return build("x86_64")


@pytest.fixture(scope="session")
def native_aarch64():
    return build("aarch64")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """tests/model_configs.py "heterogeneous": three pruned layers, two KV-cache groups of
    different head counts (4 q / 2 kv heads and 2 q / 1 kv head), random float16 weights.  With
    seed 0 no EOS comes up in the 40 greedy tokens, and the top two logits are >= 8e-4 apart."""
    from compiler.frontend.synthetic import write_random_checkpoint
    from model_configs import CHECKPOINTS

    config, opts = CHECKPOINTS["heterogeneous"]
    return write_random_checkpoint(tmp_path_factory.mktemp("checkpoint") / "heterogeneous", config, seed=0, **opts)


def _compile(checkpoint, tmp_path_factory, name: str, **target) -> Path:
    from compiler.compile import CompileOptions, compile_model

    return compile_model(checkpoint, tmp_path_factory.mktemp(name) / "pkg", CompileOptions(**PACKAGE_OPTIONS, **target))


@pytest.fixture(scope="session")
def package_x86(checkpoint, tmp_path_factory):
    """The host build: lib/model.so for this x86_64 CPU."""
    return _compile(checkpoint, tmp_path_factory, "host")


@pytest.fixture(scope="session")
def package_aarch64(checkpoint, tmp_path_factory):
    """The phone build (CPU only): lib/model.so and lib/libmodel.a, aarch64-linux-android."""
    need_phone_toolchain()
    return _compile(checkpoint, tmp_path_factory, "aarch64", soc=PHONE_SOC, device="cpu")


@pytest.fixture(scope="session")
def package_x86_android(checkpoint, tmp_path_factory):
    """An x86_64 phone build, for its lib/libmodel.a: a system-lib model this host can link and run."""
    need_phone_toolchain()
    return _compile(checkpoint, tmp_path_factory, "x86-android", soc=str(ANDROID_X86_64), device="cpu")


@pytest.fixture(scope="session")
def reference(package_x86):
    """(tokens, logits rows) of TVM's Python runtime on the host package: greedy, stop on EOS."""
    return engine_reference(package_x86, PROMPT, MAX_TOKENS)
