/*
 * llama-aot on-device runtime: JNI glue for org.llamaaot.LlamaAot (jni/LlamaAot.java).
 * Every native method maps to one C API call; a failure throws LlamaAot$LlamaAotException(status,
 * llama_aot_last_error()).
 */
#include <jni.h>

#include <algorithm>
#include <string>
#include <vector>

#include "llama_aot.h"

namespace {

llama_aot_model* H(jlong h) { return reinterpret_cast<llama_aot_model*>(static_cast<intptr_t>(h)); }

void Throw(JNIEnv* env, int status, const char* msg) {
  jclass cls = env->FindClass("org/llamaaot/LlamaAot$LlamaAotException");
  if (cls == nullptr) return;  // NoClassDefFoundError is already pending
  jmethodID ctor = env->GetMethodID(cls, "<init>", "(ILjava/lang/String;)V");
  if (ctor == nullptr) return;
  jstring jmsg = env->NewStringUTF(msg ? msg : "");
  jobject ex = env->NewObject(cls, ctor, static_cast<jint>(status), jmsg);
  if (ex != nullptr) env->Throw(static_cast<jthrowable>(ex));
}

void ThrowLast(JNIEnv* env, int status) { Throw(env, status, llama_aot_last_error()); }

std::string Utf8(JNIEnv* env, jstring s, const char* fallback) {
  if (s == nullptr) return fallback;
  const char* c = env->GetStringUTFChars(s, nullptr);
  std::string out = c ? c : fallback;
  if (c) env->ReleaseStringUTFChars(s, c);
  return out;
}

jfloatArray ToJava(JNIEnv* env, const std::vector<float>& v) {
  jfloatArray arr = env->NewFloatArray(static_cast<jsize>(v.size()));
  if (arr != nullptr) env->SetFloatArrayRegion(arr, 0, static_cast<jsize>(v.size()), v.data());
  return arr;
}

/*! \brief The Java TokenListener of one generate call, called on the generating thread. */
struct Listener {
  JNIEnv* env;
  jobject obj;
  jmethodID on_token;
};

int OnToken(int32_t token, void* user) {
  auto* l = static_cast<Listener*>(user);
  jboolean stop = l->env->CallBooleanMethod(l->obj, l->on_token, static_cast<jint>(token));
  return (l->env->ExceptionCheck() || stop) ? 1 : 0;  // a listener's exception stops the turn, then propagates
}

}  // namespace

extern "C" {

JNIEXPORT jlong JNICALL Java_org_llamaaot_LlamaAot_nativeOpen(JNIEnv* env, jclass, jstring dir,
                                                              jstring device) {
  if (dir == nullptr) {
    Throw(env, LLAMA_AOT_ERR_INVALID_ARGUMENT, "packageDir is null");
    return 0;
  }
  std::string d = Utf8(env, dir, "");
  std::string dev = Utf8(env, device, "");  // null: the package's own device (target.device)
  llama_aot_model* m = nullptr;
  int rc = llama_aot_open(d.c_str(), dev.c_str(), &m);
  if (rc != LLAMA_AOT_OK) {
    ThrowLast(env, rc);
    return 0;
  }
  return static_cast<jlong>(reinterpret_cast<intptr_t>(m));
}

JNIEXPORT jfloatArray JNICALL Java_org_llamaaot_LlamaAot_nativePrefill(JNIEnv* env, jclass,
                                                                       jlong h, jintArray ids) {
  if (ids == nullptr) {
    Throw(env, LLAMA_AOT_ERR_INVALID_ARGUMENT, "ids is null");
    return nullptr;
  }
  jsize n = env->GetArrayLength(ids);
  std::vector<int32_t> buf(static_cast<size_t>(n));
  env->GetIntArrayRegion(ids, 0, n, reinterpret_cast<jint*>(buf.data()));
  // The vocab size is known after open when llama-aot.json has model.vocab_size (the compiler
  // writes it); otherwise it becomes known with the first forward, hence the two-step fill.
  std::vector<float> logits(static_cast<size_t>(std::max(llama_aot_vocab_size(H(h)), 0)));
  int rc = llama_aot_prefill(H(h), buf.data(), static_cast<int32_t>(n),
                             logits.empty() ? nullptr : logits.data());
  if (rc != LLAMA_AOT_OK) {
    ThrowLast(env, rc);
    return nullptr;
  }
  if (logits.empty()) {
    Throw(env, LLAMA_AOT_ERR_FORMAT, "llama-aot.json has no model.vocab_size");
    return nullptr;
  }
  return ToJava(env, logits);
}

JNIEXPORT jfloatArray JNICALL Java_org_llamaaot_LlamaAot_nativeDecode(JNIEnv* env, jclass, jlong h,
                                                                      jint token) {
  std::vector<float> logits(static_cast<size_t>(std::max(llama_aot_vocab_size(H(h)), 1)));
  int rc = llama_aot_decode(H(h), static_cast<int32_t>(token), logits.data());
  if (rc != LLAMA_AOT_OK) {
    ThrowLast(env, rc);
    return nullptr;
  }
  return ToJava(env, logits);
}

JNIEXPORT jint JNICALL Java_org_llamaaot_LlamaAot_nativeSample(JNIEnv* env, jclass, jlong h,
                                                               jfloatArray logits, jfloat temperature,
                                                               jfloat top_p, jlong seed) {
  if (logits == nullptr || env->GetArrayLength(logits) != llama_aot_vocab_size(H(h))) {
    Throw(env, LLAMA_AOT_ERR_INVALID_ARGUMENT, "logits must hold vocabSize() floats");
    return -1;
  }
  jsize n = env->GetArrayLength(logits);
  std::vector<float> buf(static_cast<size_t>(n));
  env->GetFloatArrayRegion(logits, 0, n, buf.data());
  int32_t tok = llama_aot_sample(H(h), buf.data(), temperature, top_p, static_cast<uint64_t>(seed));
  if (tok < 0) ThrowLast(env, tok);
  return tok;
}

JNIEXPORT jintArray JNICALL Java_org_llamaaot_LlamaAot_nativeGenerate(JNIEnv* env, jclass, jlong h, jintArray ids,
                                                                      jint max_tokens, jfloat temperature,
                                                                      jfloat top_p, jlong seed, jboolean stop_on_eos,
                                                                      jobject listener) {
  if (ids == nullptr || max_tokens <= 0) {
    Throw(env, LLAMA_AOT_ERR_INVALID_ARGUMENT, "generate: ids must not be null and maxTokens must be > 0");
    return nullptr;
  }
  jsize n = env->GetArrayLength(ids);
  std::vector<int32_t> in(static_cast<size_t>(n)), out(static_cast<size_t>(max_tokens));
  env->GetIntArrayRegion(ids, 0, n, reinterpret_cast<jint*>(in.data()));
  Listener l{env, listener, nullptr};
  if (listener != nullptr) {
    l.on_token = env->GetMethodID(env->GetObjectClass(listener), "onToken", "(I)Z");
    if (l.on_token == nullptr) return nullptr;  // NoSuchMethodError is pending
  }
  llama_aot_generate_params p{static_cast<int32_t>(max_tokens), temperature, top_p, static_cast<uint64_t>(seed),
                              stop_on_eos ? 1 : 0};
  int32_t made = llama_aot_generate(H(h), in.data(), static_cast<int32_t>(n), &p, listener ? OnToken : nullptr, &l,
                                    out.data(), static_cast<int32_t>(max_tokens));
  if (env->ExceptionCheck()) return nullptr;  // the listener threw
  if (made < 0) {
    ThrowLast(env, made);
    return nullptr;
  }
  jintArray arr = env->NewIntArray(made);
  if (arr != nullptr) env->SetIntArrayRegion(arr, 0, made, reinterpret_cast<const jint*>(out.data()));
  return arr;
}

JNIEXPORT void JNICALL Java_org_llamaaot_LlamaAot_nativeCancel(JNIEnv*, jclass, jlong h) { llama_aot_cancel(H(h)); }

JNIEXPORT void JNICALL Java_org_llamaaot_LlamaAot_nativeReset(JNIEnv* env, jclass, jlong h) {
  int rc = llama_aot_reset(H(h));
  if (rc != LLAMA_AOT_OK) ThrowLast(env, rc);
}

JNIEXPORT jint JNICALL Java_org_llamaaot_LlamaAot_nativeVocabSize(JNIEnv*, jclass, jlong h) {
  return llama_aot_vocab_size(H(h));
}

JNIEXPORT jint JNICALL Java_org_llamaaot_LlamaAot_nativeContextWindow(JNIEnv*, jclass, jlong h) {
  return llama_aot_context_window(H(h));
}

JNIEXPORT jint JNICALL Java_org_llamaaot_LlamaAot_nativeSeqLen(JNIEnv*, jclass, jlong h) {
  return llama_aot_seq_len(H(h));
}

JNIEXPORT jboolean JNICALL Java_org_llamaaot_LlamaAot_nativeIsEos(JNIEnv*, jclass, jlong h,
                                                                 jint token) {
  return llama_aot_is_eos(H(h), static_cast<int32_t>(token)) ? JNI_TRUE : JNI_FALSE;
}

JNIEXPORT void JNICALL Java_org_llamaaot_LlamaAot_nativeSetThreads(JNIEnv* env, jclass, jint n,
                                                                   jint affinity) {
  int rc = llama_aot_set_threads(n, affinity);
  if (rc != LLAMA_AOT_OK) ThrowLast(env, rc);
}

JNIEXPORT void JNICALL Java_org_llamaaot_LlamaAot_nativeClose(JNIEnv*, jclass, jlong h) {
  llama_aot_close(H(h));
}

}  // extern "C"
