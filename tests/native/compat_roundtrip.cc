// Checks runtime_stubs/native/compat (our replacements for TVM's missing support headers) against
// the formats the wheel's own libtvm writes:
//   compat_roundtrip IN.params OUT.params
// loads IN (written by Python's tvm.runtime.save_param_dict_to_file, i.e. TVM's serializer) through
// our runtime's runtime.LoadParamsFromFile, prints "name dtype shape checksum" per tensor, writes it
// back with runtime.SaveParamsToFile (our serializer), and runs base64 stream round trips.
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/function.h>
#include <tvm/runtime/tensor.h>

#include <cstdio>
#include <string>

#include "../support/base64.h"
#include "../support/bytes_io.h"

namespace ffi = tvm::ffi;

static int CheckBase64(const std::string& raw, const std::string& expect) {
  std::string enc;
  tvm::support::BytesOutStream out(&enc);
  tvm::support::Base64OutStream b64(&out);
  b64.Write(raw.data(), raw.size());
  b64.Finish();
  if (!expect.empty() && enc != expect) {
    std::printf("base64 mismatch: %s != %s\n", enc.c_str(), expect.c_str());
    return 1;
  }
  tvm::support::BytesInStream in(enc + "\n");
  tvm::support::Base64InStream dec(&in);
  dec.InitPosition();
  std::string back(raw.size(), '\0');
  if (dec.Read(&back[0], back.size()) != raw.size() || back != raw) {
    std::printf("base64 round trip failed for %zu bytes\n", raw.size());
    return 1;
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: compat_roundtrip IN.params OUT.params\n");
    return 2;
  }
  auto load = ffi::Function::GetGlobalRequired("runtime.LoadParamsFromFile");
  auto save = ffi::Function::GetGlobalRequired("runtime.SaveParamsToFile");
  auto params = load(ffi::String(argv[1])).cast<ffi::Map<ffi::String, tvm::runtime::Tensor>>();
  for (const auto& kv : params) {
    const DLTensor* t = kv.second.operator->();
    double checksum = 0;
    size_t n = 1;
    for (int i = 0; i < t->ndim; ++i) n *= static_cast<size_t>(t->shape[i]);
    const unsigned char* bytes = static_cast<const unsigned char*>(t->data);
    size_t nbytes = n * ((t->dtype.bits * t->dtype.lanes + 7) / 8);
    for (size_t i = 0; i < nbytes; ++i) checksum += bytes[i] * static_cast<double>(i % 251 + 1);
    std::printf("%s %s [", std::string(kv.first).c_str(),
                std::string(ffi::DLDataTypeToString(t->dtype)).c_str());
    for (int i = 0; i < t->ndim; ++i) std::printf(i ? ",%lld" : "%lld", static_cast<long long>(t->shape[i]));
    std::printf("] %.1f\n", checksum);
  }
  save(params, ffi::String(argv[2]));
  int bad = CheckBase64("hello", "aGVsbG8=") + CheckBase64("", "") + CheckBase64("ab", "YWI=");
  std::string blob;
  for (int i = 0; i < 1000; ++i) blob.push_back(static_cast<char>((i * 7919) & 0xff));
  bad += CheckBase64(blob, "");
  std::printf("base64 %s\n", bad ? "FAILED" : "ok");
  return bad ? 1 : 0;
}
