# Cross toolchain: Debian's aarch64-linux-gnu GCC (apt-get install g++-aarch64-linux-gnu).
# Linux aarch64 (glibc) stands in for Android here; run the results with
#   qemu-aarch64 -L /usr/aarch64-linux-gnu ./llama_aot_run ...
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(LLAMA_AOT_CROSS_PREFIX "aarch64-linux-gnu-" CACHE STRING "")
set(CMAKE_C_COMPILER "${LLAMA_AOT_CROSS_PREFIX}gcc")
set(CMAKE_CXX_COMPILER "${LLAMA_AOT_CROSS_PREFIX}g++")
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
if(NOT CMAKE_CROSSCOMPILING_EMULATOR)
  set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/aarch64-linux-gnu)
endif()
