/*
 * Bridging header for Swift apps that do not use the module map (Xcode: "Objective-C Bridging
 * Header" = path/to/LlamaAot-Bridging.h).  Exposes the C API of llama_aot.h to Swift:
 *
 *   var model: OpaquePointer? = nil
 *   guard llama_aot_open(dir, "cpu", &model) == LLAMA_AOT_OK.rawValue else {
 *     fatalError(String(cString: llama_aot_last_error()))
 *   }
 *   var logits = [Float](repeating: 0, count: Int(llama_aot_vocab_size(model)))
 *   llama_aot_prefill(model, ids, Int32(ids.count), &logits)
 *   let tok = llama_aot_sample(model, logits, 0, 1, 0)
 *   llama_aot_close(model)
 *
 * Link with -force_load libllama_aot_runtime.a -lc++ and the model's system-lib objects
 * (iOS apps cannot dlopen a downloaded model .so; the package's llama-aot.json then says
 * "library": "system:<prefix>").
 */
#ifndef LLAMA_AOT_BRIDGING_H_
#define LLAMA_AOT_BRIDGING_H_

#include "llama_aot.h"

#endif  // LLAMA_AOT_BRIDGING_H_
