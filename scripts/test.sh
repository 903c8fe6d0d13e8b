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
python3 -m pytest tests -q "$@"
