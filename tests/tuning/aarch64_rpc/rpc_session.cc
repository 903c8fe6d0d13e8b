// One TVM RPC session on an already-accepted socket: the device side of `llama-aot tune --rpc` for a cross
// target, built for aarch64 against TVM's own prebuilt runtime (the apache-tvm manylinux aarch64 wheel) and run
// under qemu-aarch64 by qemu_rpc_server.py, which does the tracker registration and the handshake on the host
// and passes the socket down (argv[1] = its fd, argv[2] = the session's work directory).
//
// What a TVM RPC server provides besides the runtime's "rpc.ServerLoop": where uploaded files go
// ("tvm.rpc.server.workpath") and how a module is loaded ("tvm.rpc.server.load_module"); upload, download,
// remove and the timing evaluator (with its cache flush) are in libtvm_runtime already.
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s SOCKET_FD WORKDIR\n", argv[0]);
    return 2;
  }
  const int fd = std::atoi(argv[1]);
  const std::string workdir = argv[2];
  tvm::ffi::Function::SetGlobal(
      "tvm.rpc.server.workpath",
      tvm::ffi::Function::FromTyped([workdir](tvm::ffi::String name) -> tvm::ffi::String {
        return workdir + "/" + std::string(name);
      }),
      true);
  tvm::ffi::Function::SetGlobal(
      "tvm.rpc.server.load_module",
      tvm::ffi::Function::FromTyped([workdir](tvm::ffi::String name) -> tvm::ffi::Module {
        return tvm::ffi::Module::LoadFromFile(workdir + "/" + std::string(name));
      }),
      true);
  auto loop = tvm::ffi::Function::GetGlobal("rpc.ServerLoop");
  if (!loop.has_value()) {
    std::fprintf(stderr, "rpc.ServerLoop is not in this runtime\n");
    return 1;
  }
  (*loop)(fd);
  return 0;
}
