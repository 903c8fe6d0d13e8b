/*
 * llama-aot on-device runtime: C API.
 *
 * Runs a package produced by `llama-aot compile` (OUT/llama-aot.json, OUT/lib/model.so or a
 * statically linked system-lib model, OUT/params/manifest.json + shard files) with TVM's Relax VM
 * and paged KV cache, one sequence at a time.
 *
 *   llama_aot_model* m;
 *   if (llama_aot_open("/data/local/tmp/OUT", "cpu", &m) != LLAMA_AOT_OK) {
 *     fprintf(stderr, "%s\n", llama_aot_last_error());
 *   }
 *   float* logits = malloc(sizeof(float) * llama_aot_vocab_size(m));
 *   llama_aot_prefill(m, prompt, n, logits);
 *   for (;;) {
 *     int32_t tok = llama_aot_sample(m, logits, 0.0f, 1.0f, 0);   // greedy
 *     if (llama_aot_is_eos(m, tok)) break;
 *     llama_aot_decode(m, tok, logits);
 *   }
 *   llama_aot_close(m);
 *
 * Conventions: functions returning `int` return LLAMA_AOT_OK (0) or a negative llama_aot_status;
 * the message of the last failure on the calling thread is llama_aot_last_error().  A handle may
 * be used from any thread, but not from two threads at once.
 */
#ifndef LLAMA_AOT_H_
#define LLAMA_AOT_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define LLAMA_AOT_API __declspec(dllexport)
#else
#define LLAMA_AOT_API __attribute__((visibility("default")))
#endif

#define LLAMA_AOT_VERSION "0.1.0"

typedef enum llama_aot_status {
  LLAMA_AOT_OK = 0,
  LLAMA_AOT_ERR_INVALID_ARGUMENT = -1, /* NULL handle/pointer, token outside the vocabulary, ... */
  LLAMA_AOT_ERR_IO = -2,               /* a package file is missing, unreadable or truncated */
  LLAMA_AOT_ERR_FORMAT = -3,           /* llama-aot.json / manifest malformed or inconsistent */
  LLAMA_AOT_ERR_RUNTIME = -4,          /* TVM raised while loading or running the model */
  LLAMA_AOT_ERR_CONTEXT_FULL = -5,     /* the sequence would exceed the context window */
  LLAMA_AOT_ERR_UNSUPPORTED = -6,      /* e.g. a device kind this runtime was built without */
  LLAMA_AOT_ERR_CANCELLED = -7         /* llama_aot_cancel stopped llama_aot_generate */
} llama_aot_status;

typedef struct llama_aot_model llama_aot_model;

/* Open a package directory.  `device` is "cpu", "vulkan", ..., optionally "kind:index"
 * ("cpu:0", "opencl:0", "vulkan:0", "metal:0"), or NULL / "" / "auto" for the device the package
 * was compiled for (llama-aot.json target.device; "cpu" when absent).  LLAMA_AOT_ERR_UNSUPPORTED
 * when the kind's device API is not compiled in, when there is no such device, or when the kind
 * differs from the package's target.device; also when its library needs instruction sets this CPU
 * lacks (llama-aot.json target.cpu_features against /proc/cpuinfo).  "vulkan" is
 * available in runtimes built with LLAMA_AOT_WITH_VULKAN; $LLAMA_AOT_VULKAN_DEVICE (an index or a
 * name substring) picks which physical device is vulkan:0.  The package must have been compiled
 * for that device (llama-aot compile --target vulkan); parameters are copied to the device.
 * On success *out receives a handle holding one empty sequence. */
LLAMA_AOT_API int llama_aot_open(const char* package_dir, const char* device, llama_aot_model** out);

/* Append `n` prompt tokens to the sequence (fed in chunks of the compiled prefill size).  When
 * `logits_out` is not NULL it receives the vocab_size float32 logits of the last position. */
LLAMA_AOT_API int llama_aot_prefill(llama_aot_model* m, const int32_t* ids, int32_t n,
                                    float* logits_out);

/* Append one token; `logits_out` (may be NULL) receives the next-token logits. */
LLAMA_AOT_API int llama_aot_decode(llama_aot_model* m, int32_t token, float* logits_out);

/* Pick a token from `logits` (vocab_size floats).  temperature <= 0: greedy argmax (ties: lowest
 * id).  Otherwise softmax(logits / temperature), restricted to the smallest most-probable set whose
 * mass reaches top_p (top_p >= 1: no restriction), sampled with one uniform draw that is a pure
 * function of `seed` (pass a different seed per step, e.g. base_seed + step).
 * Returns the token id (>= 0) or a negative llama_aot_status. */
LLAMA_AOT_API int32_t llama_aot_sample(const llama_aot_model* m, const float* logits,
                                       float temperature, float top_p, uint64_t seed);

/* Called by llama_aot_generate with each token as it is sampled (streaming); return nonzero to stop after
 * this token (a stop string was completed, the user closed the view, ...). */
typedef int (*llama_aot_token_callback)(int32_t token, void* user_data);

typedef struct llama_aot_generate_params {
  int32_t max_tokens; /* > 0 */
  float temperature;  /* <= 0: greedy */
  float top_p;        /* >= 1: no restriction */
  uint64_t seed;      /* step i samples with seed + i (see llama_aot_sample) */
  int stop_on_eos;    /* nonzero: stop after an end-of-sequence token (llama_aot_is_eos) */
} llama_aot_generate_params;

/* One turn of a conversation, on the sequence the handle holds: append the `n` ids (the new part of the
 * conversation, rendered by the caller's chat template), then sample up to params->max_tokens, calling
 * `on_token` (may be NULL) with each.  The KV cache keeps every earlier turn, so a turn costs only its
 * own tokens.  Afterwards the sequence holds the ids and every generated token except the last (its K/V
 * is computed only when it is fed): the next turn's ids start with that last token, e.g. Llama 3's
 * <|eot_id|> followed by the next user header.  `out_ids` (may be NULL) receives up to `out_capacity`
 * generated ids.  Returns how many tokens were generated (>= 0: it stopped at max_tokens, at an EOS, when
 * on_token returned nonzero, or when the context window filled up), or a negative llama_aot_status:
 * LLAMA_AOT_ERR_CANCELLED when llama_aot_cancel was called during the turn (the tokens so far were
 * delivered to on_token and are all in the sequence; llama_aot_last_error is set on the generating
 * thread). */
LLAMA_AOT_API int32_t llama_aot_generate(llama_aot_model* m, const int32_t* ids, int32_t n,
                                         const llama_aot_generate_params* params,
                                         llama_aot_token_callback on_token, void* user_data,
                                         int32_t* out_ids, int32_t out_capacity);

/* Safe from any thread: the llama_aot_generate running on `m` stops after its current step and returns
 * LLAMA_AOT_ERR_CANCELLED; a cancel with no turn running applies to the next one. */
LLAMA_AOT_API void llama_aot_cancel(llama_aot_model* m);

/* Drop the sequence (KV cache contents) and start an empty one. */
LLAMA_AOT_API int llama_aot_reset(llama_aot_model* m);

/* Model facts (0 / -1 when m is NULL).  llama_aot_context_window: the most tokens the sequence may hold;
 * INT32_MAX when every layer has a sliding window (compile --sliding-window: the caches slide, so generation
 * goes on with flat memory).  Packages with a window in some layers only are bounded by the full layers. */
LLAMA_AOT_API int32_t llama_aot_vocab_size(const llama_aot_model* m);
LLAMA_AOT_API int32_t llama_aot_context_window(const llama_aot_model* m);
LLAMA_AOT_API int32_t llama_aot_seq_len(const llama_aot_model* m); /* tokens in the KV cache */
LLAMA_AOT_API int llama_aot_is_eos(const llama_aot_model* m, int32_t token); /* 1 / 0 */

/* The device the model runs on, as one JSON object: {"device": "vulkan:0", ...} plus, for a Vulkan
 * device, its name, driver and limits (the keys of the Vulkan target: subgroup_size,
 * max_shared_memory_per_block, ...).  Owned by the handle; "" when m is NULL. */
LLAMA_AOT_API const char* llama_aot_device_info(const llama_aot_model* m);

/* Configure TVM's CPU thread pool before or between calls: num_threads <= 0 keeps the default
 * (TVM_NUM_THREADS or the number of cores); affinity 0 = default, 1 = big cores, -1 = little. */
LLAMA_AOT_API int llama_aot_set_threads(int num_threads, int affinity);

/* Free the handle (NULL is allowed). */
LLAMA_AOT_API void llama_aot_close(llama_aot_model* m);

/* Message of the last failure on this thread ("" if none).  Valid until the next call that fails
 * on this thread. */
LLAMA_AOT_API const char* llama_aot_last_error(void);

/* Human-readable name of a status code. */
LLAMA_AOT_API const char* llama_aot_status_string(int status);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* LLAMA_AOT_H_ */
