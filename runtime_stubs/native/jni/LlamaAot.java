/*
 * llama-aot on-device runtime: Java binding (JNI over include/llama_aot.h).
 *
 * Android: put libllama_aot_runtime.so, libllama_aot_jni.so (and the NDK's libc++_shared.so when
 * the runtime was built with the shared STL) under jniLibs/arm64-v8a/, copy the package directory
 * to app storage, then
 *
 *   try (LlamaAot m = new LlamaAot(packageDir, "cpu")) {
 *     float[] logits = m.prefill(promptIds);
 *     for (int i = 0; i < maxTokens; i++) {
 *       int tok = m.sample(logits, 0f, 1f, i);   // greedy
 *       if (m.isEos(tok)) break;
 *       logits = m.decode(tok);
 *     }
 *   }
 *
 * or, one turn of a chat at a time, streamed (the KV cache keeps the earlier turns):
 *
 *   int[] reply = m.generate(turnIds, 256, 0.7f, 0.95f, seed, true, tok -> { show(tok); return false; });
 *   // the next turn's ids start with reply[reply.length - 1]; a stop button calls m.cancel()
 *
 * Errors surface as LlamaAot.LlamaAotException carrying the C status code.  An instance is not
 * thread-safe: use it from one thread at a time, except cancel(), which any thread may call.
 */
package org.llamaaot;

public final class LlamaAot implements AutoCloseable {
  static {
    System.loadLibrary("llama_aot_jni");
  }

  /** A failure reported by the native runtime; {@code status} is a negative llama_aot_status. */
  public static final class LlamaAotException extends RuntimeException {
    public final int status;

    public LlamaAotException(int status, String message) {
      super(message);
      this.status = status;
    }
  }

  // llama_aot_status values
  public static final int ERR_INVALID_ARGUMENT = -1;
  public static final int ERR_IO = -2;
  public static final int ERR_FORMAT = -3;
  public static final int ERR_RUNTIME = -4;
  public static final int ERR_CONTEXT_FULL = -5;
  public static final int ERR_UNSUPPORTED = -6;
  public static final int ERR_CANCELLED = -7;

  /** Sees each token of a turn as it is sampled; return true to stop after it (a stop string). */
  public interface TokenListener {
    boolean onToken(int token);
  }

  private long handle;

  /** Open a package directory on a device ("cpu", "vulkan", "kind:index"; null: the package's own). */
  public LlamaAot(String packageDir, String device) {
    handle = nativeOpen(packageDir, device);
  }

  /** Feed prompt ids; returns the next-token logits (vocabSize floats). */
  public float[] prefill(int[] ids) {
    return nativePrefill(live(), ids);
  }

  /** Feed one token; returns the next-token logits. */
  public float[] decode(int token) {
    return nativeDecode(live(), token);
  }

  /** temperature <= 0: greedy; else softmax/top-p with one draw determined by {@code seed}. */
  public int sample(float[] logits, float temperature, float topP, long seed) {
    return nativeSample(live(), logits, temperature, topP, seed);
  }

  /**
   * One turn (llama_aot_generate): append {@code ids} to the sequence, then sample up to {@code maxTokens}
   * (temperature <= 0: greedy; step i uses seed + i), each token passed to {@code listener} (may be null) as
   * it comes. Returns the generated ids; every one but the last is in the KV cache afterwards, so the next
   * turn's ids start with the last. {@link #cancel()} from another thread ends it with a
   * LlamaAotException of status ERR_CANCELLED; an exception thrown by the listener ends it and propagates.
   */
  public int[] generate(int[] ids, int maxTokens, float temperature, float topP, long seed, boolean stopOnEos,
                        TokenListener listener) {
    return nativeGenerate(live(), ids, maxTokens, temperature, topP, seed, stopOnEos, listener);
  }

  /** Safe from any thread: the running generate() stops after its current token. */
  public void cancel() {
    long h = handle;
    if (h != 0) nativeCancel(h);
  }

  /** Start an empty sequence. */
  public void reset() {
    nativeReset(live());
  }

  public int vocabSize() {
    return nativeVocabSize(live());
  }

  public int contextWindow() {
    return nativeContextWindow(live());
  }

  public int seqLen() {
    return nativeSeqLen(live());
  }

  public boolean isEos(int token) {
    return nativeIsEos(live(), token);
  }

  /** TVM CPU thread pool: numThreads <= 0 keeps the default; affinity 1 big / -1 little / 0. */
  public static void setThreads(int numThreads, int affinity) {
    nativeSetThreads(numThreads, affinity);
  }

  @Override
  public synchronized void close() {
    if (handle != 0) {
      nativeClose(handle);
      handle = 0;
    }
  }

  private long live() {
    if (handle == 0) throw new IllegalStateException("LlamaAot is closed");
    return handle;
  }

  private static native long nativeOpen(String packageDir, String device);
  private static native float[] nativePrefill(long handle, int[] ids);
  private static native float[] nativeDecode(long handle, int token);
  private static native int nativeSample(long handle, float[] logits, float temperature, float topP, long seed);
  private static native int[] nativeGenerate(long handle, int[] ids, int maxTokens, float temperature, float topP,
                                             long seed, boolean stopOnEos, TokenListener listener);
  private static native void nativeCancel(long handle);
  private static native void nativeReset(long handle);
  private static native int nativeVocabSize(long handle);
  private static native int nativeContextWindow(long handle);
  private static native int nativeSeqLen(long handle);
  private static native boolean nativeIsEos(long handle, int token);
  private static native void nativeSetThreads(int numThreads, int affinity);
  private static native void nativeClose(long handle);
}
