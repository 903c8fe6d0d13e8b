#!/usr/bin/env bash
# README command 2: install everything the tests need on a fresh machine, then run the whole suite.
# .ci/run calls exactly this. Root (or sudo-less root containers) is assumed for apt-get, as on our machines.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
# clang/lld/llvm: phone libraries; g++-aarch64 + qemu-user: the aarch64 runtime stubs under emulation;
# cmake/ninja/JDK: native runtime + JNI; glslang/spirv/mesa: Vulkan codegen + lavapipe; pocl: OpenCL on the CPU;
# valgrind: cachegrind probes of the derived tilings
APT_PACKAGES="clang lld llvm g++ cmake ninja-build openjdk-17-jdk-headless g++-aarch64-linux-gnu qemu-user \
  glslang-tools spirv-tools mesa-vulkan-drivers libvulkan-dev vulkan-tools pocl-opencl-icd ocl-icd-opencl-dev valgrind vulkan-validationlayers"
if ! dpkg -s $APT_PACKAGES >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $APT_PACKAGES >/dev/null
fi
python3 -m pip install -q -e ".[test]"
# one worker per core (at most 4: each holds a TVM compiler, ~2 GB); a test file stays on one worker so
# the session fixtures its tests share (compiled packages, native builds) are built once per worker
WORKERS=$(python3 -c "import os; print(max(1, min(4, len(os.sched_getaffinity(0)))))")
python3 -m pytest tests -q -n "$WORKERS" --dist loadfile "$@"
