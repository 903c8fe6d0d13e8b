/*
 * llama_aot_run: command-line driver over the C API (include/llama_aot.h).
 *
 *   llama_aot_run PACKAGE_DIR --prompt-ids 1,2,3 --max-tokens N
 *                 [--device cpu|vulkan[:N]|auto] [--threads N] [--temperature T] [--top-p P] [--seed S]
 *                 [--no-stop-on-eos] [--logits-out FILE] [--force-ids 4,5,6] [--verbose]
 *                 [--then-ids 7,8 [--then-ids ...]]
 *
 * Prints one JSON object on stdout: the generated token ids and timings (same keys as the Python
 * engine's Generation.to_json, plus load_seconds).  --logits-out writes the float32 logits row each
 * generated token was sampled from, back to back (little-endian raw, vocab_size floats per row).
 * --force-ids feeds the given tokens (teacher forcing) instead of the sampled ones for the first
 * steps: the logits then score that continuation, which is how a build is compared with a
 * reference on the same sequence.  --verbose adds "device_info" (llama_aot_device_info) to the JSON.
 * --then-ids makes it a conversation through llama_aot_generate (the turn API): the first turn is
 * --prompt-ids, each --then-ids is one more turn, appended after the previous turn's last token (which
 * the turn API leaves out of the cache), and the JSON is {"turns": [[ids], ...], "streamed": ...}:
 * the ids the streaming callback saw, which must equal the turns' out_ids ("streamed_matches").
 * Exit status: 0 on success, 2 on bad usage, 1 when the runtime reports an error (on stderr).
 */
#include <sys/resource.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "llama_aot.h"

namespace {

double Now() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

double PeakRssMb() {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0.0;
#if defined(__APPLE__)
  return static_cast<double>(ru.ru_maxrss) / (1024.0 * 1024.0);
#else
  return static_cast<double>(ru.ru_maxrss) / 1024.0;
#endif
}

[[noreturn]] void Usage(const char* msg) {
  std::fprintf(stderr,
               "error: %s\n"
               "usage: llama_aot_run PACKAGE_DIR --prompt-ids 1,2,3 --max-tokens N\n"
               "       [--device cpu|vulkan[:N]|auto] (default: the package's target device;\n"
               "        LLAMA_AOT_VULKAN_DEVICE = index or name picks the Vulkan GPU)\n"
               "       [--threads N] [--temperature T] [--top-p P] [--seed S] [--no-stop-on-eos]\n"
               "       [--logits-out FILE] [--force-ids 4,5,6] [--verbose] [--then-ids 7,8 ...]\n",
               msg);
  std::exit(2);
}

std::vector<int32_t> ParseIds(const char* s) {
  std::vector<int32_t> ids;
  const char* p = s;
  while (*p) {
    char* end = nullptr;
    long v = std::strtol(p, &end, 10);
    if (end == p) Usage("token ids are comma-separated integers (--prompt-ids, --force-ids)");
    ids.push_back(static_cast<int32_t>(v));
    p = end;
    if (*p == ',') ++p;
    else if (*p) Usage("token ids are comma-separated integers (--prompt-ids, --force-ids)");
  }
  return ids;
}

int Die(const char* what, int rc) {
  std::fprintf(stderr, "llama_aot_run: %s failed (%s): %s\n", what, llama_aot_status_string(rc),
               llama_aot_last_error());
  return 1;
}

void PrintIds(const std::vector<int32_t>& v) {
  std::printf("[");
  for (size_t i = 0; i < v.size(); ++i) std::printf(i ? ", %d" : "%d", v[i]);
  std::printf("]");
}

int Record(int32_t token, void* user) {
  static_cast<std::vector<int32_t>*>(user)->push_back(token);
  return 0;
}

/*! \brief A conversation through llama_aot_generate: turn 0 = prompt, turn i = last token + then[i - 1]. */
int RunTurns(llama_aot_model* m, const std::vector<int32_t>& prompt, const std::vector<std::vector<int32_t>>& then,
             const llama_aot_generate_params& params) {
  std::vector<std::vector<int32_t>> turns;
  std::vector<int32_t> streamed, ids = prompt;
  bool matches = true;
  for (size_t t = 0; t <= then.size(); ++t) {
    if (t > 0) {
      ids.assign(1, turns.back().back());
      ids.insert(ids.end(), then[t - 1].begin(), then[t - 1].end());
    }
    std::vector<int32_t> out(static_cast<size_t>(params.max_tokens)), seen;
    int32_t made = llama_aot_generate(m, ids.data(), static_cast<int32_t>(ids.size()), &params, Record, &seen,
                                      out.data(), static_cast<int32_t>(out.size()));
    if (made < 0) return Die("llama_aot_generate", made);
    if (made == 0) return Die("llama_aot_generate (no token)", LLAMA_AOT_ERR_CONTEXT_FULL);
    out.resize(static_cast<size_t>(made));
    matches = matches && seen == out;
    streamed.insert(streamed.end(), seen.begin(), seen.end());
    turns.push_back(out);
  }
  std::printf("{\"turns\": [");
  for (size_t t = 0; t < turns.size(); ++t) {
    if (t) std::printf(", ");
    PrintIds(turns[t]);
  }
  std::printf("], \"streamed\": ");
  PrintIds(streamed);
  std::printf(", \"streamed_matches\": %s, \"seq_len\": %d}\n", matches ? "true" : "false", llama_aot_seq_len(m));
  llama_aot_close(m);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const char* package = nullptr;
  const char* device = nullptr;  // the package's target.device
  const char* logits_path = nullptr;
  std::vector<int32_t> prompt;
  long max_tokens = 16;
  int threads = 0;
  float temperature = 0.0f, top_p = 1.0f;
  unsigned long long seed = 0;
  bool stop_on_eos = true;
  bool verbose = false;
  std::vector<int32_t> forced;
  std::vector<std::vector<int32_t>> then;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) Usage((a + " needs a value").c_str());
      return argv[++i];
    };
    if (a == "--prompt-ids") prompt = ParseIds(next());
    else if (a == "--max-tokens") max_tokens = std::strtol(next(), nullptr, 10);
    else if (a == "--device") device = next();
    else if (a == "--threads") threads = static_cast<int>(std::strtol(next(), nullptr, 10));
    else if (a == "--temperature") temperature = std::strtof(next(), nullptr);
    else if (a == "--top-p") top_p = std::strtof(next(), nullptr);
    else if (a == "--seed") seed = std::strtoull(next(), nullptr, 10);
    else if (a == "--no-stop-on-eos") stop_on_eos = false;
    else if (a == "--logits-out") logits_path = next();
    else if (a == "--force-ids") forced = ParseIds(next());
    else if (a == "--verbose") verbose = true;
    else if (a == "--then-ids") then.push_back(ParseIds(next()));
    else if (a == "-h" || a == "--help") Usage("help requested");
    else if (!a.empty() && a[0] == '-') Usage(("unknown option " + a).c_str());
    else if (!package) package = argv[i];
    else Usage("more than one PACKAGE_DIR");
  }
  if (!package) Usage("PACKAGE_DIR is required");
  if (prompt.empty()) Usage("--prompt-ids is required (at least one id)");
  if (max_tokens < 1) Usage("--max-tokens must be >= 1");

  int rc;
  if (threads > 0 && (rc = llama_aot_set_threads(threads, 0)) != LLAMA_AOT_OK) {
    return Die("llama_aot_set_threads", rc);
  }
  double t0 = Now();
  llama_aot_model* m = nullptr;
  if ((rc = llama_aot_open(package, device, &m)) != LLAMA_AOT_OK) return Die("llama_aot_open", rc);
  double load_seconds = Now() - t0;
  if (!then.empty()) {
    llama_aot_generate_params params{static_cast<int32_t>(max_tokens), temperature, top_p, seed, stop_on_eos ? 1 : 0};
    return RunTurns(m, prompt, then, params);
  }
  const int32_t vocab = llama_aot_vocab_size(m);
  // The vocab size may only be known after the first forward when llama-aot.json lacks it.
  std::vector<float> logits(vocab > 0 ? static_cast<size_t>(vocab) : 0);
  FILE* flog = nullptr;
  if (logits_path && !(flog = std::fopen(logits_path, "wb"))) {
    std::fprintf(stderr, "llama_aot_run: cannot write %s\n", logits_path);
    return 1;
  }

  t0 = Now();
  if (vocab <= 0) {  // learn the size with a throwaway prefill, then redo it into a real buffer
    if ((rc = llama_aot_prefill(m, prompt.data(), static_cast<int32_t>(prompt.size()), nullptr)) ||
        (rc = llama_aot_reset(m))) {
      return Die("llama_aot_prefill", rc);
    }
    logits.resize(static_cast<size_t>(llama_aot_vocab_size(m)));
  }
  rc = llama_aot_prefill(m, prompt.data(), static_cast<int32_t>(prompt.size()), logits.data());
  if (rc != LLAMA_AOT_OK) return Die("llama_aot_prefill", rc);
  double prefill_seconds = Now() - t0;

  std::vector<int32_t> out;
  bool stopped_on_eos = false;
  long decode_steps = 0;
  t0 = Now();
  for (long step = 0; step < max_tokens; ++step) {
    if (flog) std::fwrite(logits.data(), sizeof(float), logits.size(), flog);
    int32_t tok = llama_aot_sample(m, logits.data(), temperature, top_p, seed + step);
    if (tok < 0) return Die("llama_aot_sample", tok);
    if (static_cast<size_t>(step) < forced.size()) tok = forced[static_cast<size_t>(step)];
    out.push_back(tok);
    if (stop_on_eos && llama_aot_is_eos(m, tok)) {
      stopped_on_eos = true;
      break;
    }
    if (step + 1 == max_tokens || llama_aot_seq_len(m) + 1 > llama_aot_context_window(m)) break;
    if ((rc = llama_aot_decode(m, tok, logits.data())) != LLAMA_AOT_OK) {
      return Die("llama_aot_decode", rc);
    }
    ++decode_steps;
  }
  double decode_seconds = Now() - t0;
  if (flog) std::fclose(flog);

  std::printf("{\"prompt_ids\": ");
  PrintIds(prompt);
  std::printf(", \"token_ids\": ");
  PrintIds(out);
  std::printf(
      ", \"stopped_on_eos\": %s, \"load_seconds\": %.6f, \"prefill_tokens\": %zu, "
      "\"prefill_seconds\": %.6f, \"prefill_tokens_per_s\": %.3f, \"decode_steps\": %ld, "
      "\"decode_seconds\": %.6f, \"decode_tokens_per_s\": %.3f, \"peak_rss_mb\": %.1f",
      stopped_on_eos ? "true" : "false", load_seconds, prompt.size(), prefill_seconds,
      prefill_seconds > 0 ? prompt.size() / prefill_seconds : 0.0, decode_steps, decode_seconds,
      decode_seconds > 0 ? decode_steps / decode_seconds : 0.0, PeakRssMb());
  if (verbose) std::printf(", \"device_info\": %s", llama_aot_device_info(m));
  std::printf("}\n");
  llama_aot_close(m);
  return 0;
}
