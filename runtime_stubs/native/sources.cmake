# The minimal set of wheel sources that make up libllama_aot_runtime.  Lists named
# LLAMA_AOT_TVM_FFI*_SOURCES are relative to site-packages/tvm_ffi/src/ffi, the other
# LLAMA_AOT_TVM_*_SOURCES to site-packages/tvm/src/runtime.  Each list is one unity-build group
# (LLAMA_AOT_UNITY_BUILD): the groups are balanced so that two compile jobs finish together.
# runtime_stubs/native_build.py parses these lists (one file per line) to hash the sources for its
# build cache: keep the format.  Why each file is needed: docs/runtime.md.

set(LLAMA_AOT_TVM_FFI_SOURCES
  object.cc
  error.cc
  function.cc
  tensor.cc
  dtype.cc
  container.cc
  init_once.cc
  custom_allocator.cc
  backtrace.cc
)

set(LLAMA_AOT_TVM_FFI_EXTRA_SOURCES
  extra/module.cc
  extra/library_module.cc
  extra/library_module_system_lib.cc
  extra/library_module_dynamic_lib.cc
  extra/env_context.cc
  extra/env_c_api.cc
  extra/json_parser.cc
  extra/json_writer.cc
)

set(LLAMA_AOT_TVM_RUNTIME_SOURCES
  logging.cc
  device_api.cc
  cpu_device_api.cc
  workspace_pool.cc
  tensor.cc
  module.cc
  file_utils.cc
  thread_pool.cc
  threading_backend.cc
  memory/memory_manager.cc
)

set(LLAMA_AOT_TVM_VM_SOURCES
  vm/builtin.cc
  vm/bytecode.cc
  vm/executable.cc
  vm/vm.cc
)

set(LLAMA_AOT_TVM_KV_SOURCES
  vm/kv_state.cc
  vm/attn_backend.cc
  vm/paged_kv_cache.cc
)
