"""Run a compiled package on the host through TVM's runtime only.

Imports ``tvm.runtime`` and nothing of the compiler, so it also works with
``TVM_USE_RUNTIME_LIB=1`` (runtime-only TVM, as on a device).
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import LlamaAotError

from .cpu_features import check_host_cpu
from .integrity import verify_package
from .package_format import read_manifest, read_package_config
from .signing import verify_signature
from .sampling import sample


@dataclass
class Generation:
    """What one ``Engine.generate`` call produced, with its timings."""

    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)  # one row per generated token
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_steps: int = 0
    first_token_seconds: float = 0.0  # from the call to the first sampled token (prefill + one draw)
    reused_tokens: int = 0  # leading prompt tokens whose K/V were already in the cache (reuse_cache=True)
    stop_reason: str = "length"  # "eos", "stop" (on_token asked to stop) or "length"

    @property
    def stopped_on_eos(self) -> bool:
        return self.stop_reason == "eos"

    @property
    def prefilled_tokens(self) -> int:
        return len(self.prompt_ids) - self.reused_tokens

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefilled_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_steps / self.decode_seconds if self.decode_seconds else 0.0

    def to_json(self) -> dict:
        return {
            "prompt_ids": self.prompt_ids,
            "token_ids": self.token_ids,
            "stopped_on_eos": self.stopped_on_eos,
            "prefill_tokens": self.prefilled_tokens,
            "reused_tokens": self.reused_tokens,
            "prefill_seconds": self.prefill_seconds,
            "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "decode_steps": self.decode_steps,
            "decode_seconds": self.decode_seconds,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "first_token_seconds": self.first_token_seconds,
            "peak_rss_mb": peak_rss_mb(),
        }


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB.

    Reads VmHWM: on Linux a child's ru_maxrss starts at its parent's peak, which would make a
    benchmark subprocess report the memory of whoever launched it.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def physical_cores() -> int:
    """Cores this process may run on, one per physical core (SMT siblings counted once).

    Why: without TVM_NUM_THREADS, TVM's thread pool takes half of the logical CPUs on x86 (it assumes
    hyper-threading), which on a VM with one thread per core leaves half the cores idle.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    siblings = set()
    for cpu in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
                siblings.add(f.read().strip())
        except OSError:
            siblings.add(str(cpu))
    return max(1, len(siblings))


class Engine:
    """A loaded package: ``Engine(OUT).generate(prompt_ids, max_tokens=...)``."""

    def __init__(
        self,
        package_dir: str | Path,
        num_threads: int | None = None,
        verify: bool = False,
        vulkan_device: str | None = None,
        trusted_keys: str | Path | None = None,
    ):
        """``num_threads``: CPU threads (default: TVM_NUM_THREADS, else one per physical core);
        ``vulkan_device``: index or name substring of the Vulkan device (default: the first);
        ``verify``: hash every weight shard in full (default: sizes + first/last MiB, libraries in full);
        ``trusted_keys``: a directory of ed25519 public keys: refuse a package none of them signed."""
        if num_threads:
            os.environ["TVM_NUM_THREADS"] = str(num_threads)
        elif "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
            os.environ["TVM_NUM_THREADS"] = str(physical_cores())
        import tvm.runtime  # after TVM_NUM_THREADS: the thread pool reads it once
        import tvm.runtime.vm

        self._tvm = tvm
        self.package_dir = Path(package_dir)
        self.config = read_package_config(self.package_dir)
        if trusted_keys is not None:  # a signature vouches for checksums.json: then every byte is checked
            verify_signature(self.package_dir, trusted_keys)
        verify_package(self.package_dir, full=verify or trusted_keys is not None)  # before any code is loaded
        check_host_cpu(self.package_dir, self.config)  # a missing instruction set: an error, not SIGILL
        rt = self.config["runtime"]
        lib_path = self.package_dir / rt["library"]
        if not lib_path.is_file():
            raise LlamaAotError(f"{lib_path} is missing; recompile the package")
        self.device = self._open_device(self.config["target"].get("device", "cpu"), vulkan_device)
        self.vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(lib_path)), self.device)
        self.params = self._load_params()
        self.context_window = int(self.config["context_window"])
        self.prefill_chunk = int(self.config["prefill_chunk"])
        self.page_size = int(rt["page_size"])
        model = self.config["model"]
        self.vocab_size = int(model["vocab_size"])
        self.eos_token_ids = set(model["eos_token_ids"])
        self.bos_token_id = model.get("bos_token_id")
        self._embed = self.vm[rt["functions"]["embed"]]
        self._prefill = self.vm[rt["functions"]["prefill"]]
        self._decode = self.vm[rt["functions"]["decode"]]
        score = rt["functions"].get("score")  # packages from before llama-aot eval have none
        self._score = self.vm[score] if score else None
        self._f_add_seq = tvm.get_global_func("vm.builtin.kv_state_add_sequence")
        self._f_remove_seq = tvm.get_global_func("vm.builtin.kv_state_remove_sequence")
        self._f_begin = tvm.get_global_func("vm.builtin.kv_state_begin_forward")
        self._f_end = tvm.get_global_func("vm.builtin.kv_state_end_forward")
        self._f_popn = tvm.get_global_func("vm.builtin.kv_state_popn")
        shape = tvm.runtime.ShapeTuple
        from .attention_window import from_package

        # a sliding window (attention_window.py): the cache holds the window only, slides
        # itself, and the model takes each token's position in the whole sequence
        self.window = from_package(self.config)
        names = rt["functions"]["create_kv_cache"]
        # per cache: sliding (a windowed group of layers) or holding the whole context window
        self.cache_windowed = [bool(w) for w in rt.get("kv_cache_windowed", [self.window is not None] * len(names))]
        if len(self.cache_windowed) != len(names) or (any(self.cache_windowed) and self.window is None):
            raise LlamaAotError(f"{self.package_dir}/llama-aot.json: runtime.kv_cache_windowed does not match its "
                                "caches and attention; recompile the package")
        window_tokens = self.window.cache_tokens(self.prefill_chunk, self.page_size) if self.window else 0
        self._f_enable_window = tvm.get_global_func("vm.builtin.attention_kv_cache_enable_sliding_window_for_seq")
        self.caches = [
            self.vm[name](
                shape([1]), shape([window_tokens if windowed else self.context_window]), shape([self.prefill_chunk]),
                shape([self.page_size]), shape([1 if windowed else 0]),
            )
            for name, windowed in zip(names, self.cache_windowed)
        ]
        self._tokenizer = None
        self.cached_ids: list[int] = []  # the tokens whose K/V the caches hold, in order
        for cache, windowed in zip(self.caches, self.cache_windowed):
            self._add_sequence(cache, windowed)

    def _open_device(self, kind: str, vulkan_device: str | None):
        tvm = self._tvm
        if kind == "cpu":
            return tvm.runtime.cpu(0)
        if kind == "vulkan":
            from . import vulkan

            if vulkan_device is not None:
                os.environ["LLAMA_AOT_VULKAN_DEVICE"] = str(vulkan_device)
            vulkan.load_plugin()  # before load_module: registers the loader of "vulkan" modules
            reason = vulkan.unavailable_reason()
            if reason:
                raise LlamaAotError(f"cannot run on Vulkan: {reason}")
            return tvm.runtime.vulkan(0)
        raise LlamaAotError(
            f"this package was built for a {kind} device, which this runtime cannot drive here; "
            "run it on the phone through the C runtime (runtime_stubs/native)"
        )

    def device_description(self) -> dict:
        """The device this engine runs on, with its limits (for ``--verbose``)."""
        if self.config["target"].get("device", "cpu") == "cpu":
            return {"device": "cpu", "threads": os.environ.get("TVM_NUM_THREADS", str(os.cpu_count()))}
        from . import vulkan

        return {"device": "vulkan", **vulkan.device_info(0)}

    def _load_params(self) -> list:
        """Weights as memory maps of the shards (verify_package has checked their sizes and hashes)."""
        entries = read_manifest(self.package_dir)
        params = []
        for e in entries:
            path = self.package_dir / "params" / e["file"]
            if not path.is_file():
                raise LlamaAotError(f"weight shard {path} is missing; recompile the package")
            count = int(np.prod(e["shape"], dtype=np.int64))
            try:
                arr = np.memmap(path, dtype=e["dtype"], mode="r", offset=e["offset"], shape=(count,))
            except ValueError:
                raise LlamaAotError(f"weight shard {path} is truncated; recompile the package") from None
            params.append(self._tvm.runtime.tensor(arr.reshape(e["shape"]), self.device))
            del arr
        return params

    # --- tokenizer --------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            path = self.package_dir / "tokenizer.json"
            if not path.is_file():
                raise LlamaAotError(f"{path} is missing: pass token ids with --prompt-ids instead of a text prompt")
            from .tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(path)
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text).ids
        if self.bos_token_id is not None and (not ids or ids[0] != self.bos_token_id):
            ids = [self.bos_token_id] + ids
        return ids

    def decode_text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # --- forward passes ---------------------------------------------------------------------------
    def _add_sequence(self, cache, windowed: bool) -> None:
        self._f_add_seq(cache, 0)
        if windowed:
            self._f_enable_window(cache, 0, self.window.cache_window(self.prefill_chunk), self.window.sinks)

    def reset(self) -> None:
        for cache, windowed in zip(self.caches, self.cache_windowed):
            self._f_remove_seq(cache, 0)
            self._add_sequence(cache, windowed)
        self.cached_ids = []

    def rewind(self, keep: int) -> None:
        """Drop the cached K/V of every token after the first ``keep`` (TVM's PopN). A sliding cache may
        have dropped the tokens it would need, so a windowed package starts over instead."""
        drop = len(self.cached_ids) - keep
        if drop <= 0:
            return
        if any(self.cache_windowed):
            self.reset()
            return
        for cache in self.caches:
            self._f_popn(cache, 0, drop)
        del self.cached_ids[keep:]

    @property
    def unbounded(self) -> bool:
        """A package windowed in every layer generates past its context window (its caches never grow)."""
        return self.window is not None and self.window.every_layer

    def _forward(self, fn, ids: Sequence[int]) -> np.ndarray:
        tvm = self._tvm
        seq_len = len(self.cached_ids)
        if not self.unbounded and seq_len + len(ids) > self.context_window:
            raise LlamaAotError(
                f"sequence of {seq_len + len(ids)} tokens exceeds the context window of "
                f"{self.context_window}; recompile with a larger --context-window or shorten the prompt"
            )
        lengths = tvm.runtime.ShapeTuple([len(ids)])
        for cache in self.caches:
            self._f_begin(cache, tvm.runtime.ShapeTuple([0]), lengths)
        embeds = self._embed(tvm.runtime.tensor(np.asarray(ids, dtype="int32"), self.device), self.params)
        if self.window:
            positions = np.arange(seq_len, seq_len + len(ids), dtype="int32")
            logits = fn(embeds, tvm.runtime.tensor(positions, self.device), *self.caches, self.params)
        else:
            logits = fn(embeds, *self.caches, self.params)
        for cache in self.caches:
            self._f_end(cache)
        self.cached_ids.extend(int(t) for t in ids)
        return logits.numpy().reshape(-1)

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Feed ids in chunks of the compiled prefill size; return the last position's logits."""
        logits = None
        for start in range(0, len(ids), self.prefill_chunk):
            logits = self._forward(self._prefill, ids[start : start + self.prefill_chunk])
        return logits

    def require_score(self) -> None:
        """Raise the one-line error for a package compiled before ``score`` existed (callers check up front)."""
        if self._score is None:
            raise LlamaAotError(f"{self.package_dir} has no score function (compiled before llama-aot eval); "
                                "recompile it")

    def score(self, ids: Sequence[int]) -> np.ndarray:
        """Logits [len(ids), vocab] of every position of a new sequence ``ids`` (row i predicts ids[i + 1]),
        computed by the library's ``score`` function chunk by chunk over the KV cache, as prefill is."""
        ids = [int(t) for t in ids]
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if not ids or bad:
            raise LlamaAotError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})" if bad
                                else "nothing to score: give at least one token")
        self.require_score()
        self.reset()
        rows = [self._forward(self._score, ids[s : s + self.prefill_chunk]).reshape(-1, self.vocab_size)
                for s in range(0, len(ids), self.prefill_chunk)]
        return rows[0] if len(rows) == 1 else np.concatenate(rows)

    def decode(self, token: int) -> np.ndarray:
        return self._forward(self._decode, [token])

    def generate(
        self,
        prompt_ids: Sequence[int],
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_on_eos: bool = True,
        keep_logits: bool = False,
        on_token: Callable[[int], bool | None] | None = None,
        reuse_cache: bool = False,
    ) -> Generation:
        """Prefill ``prompt_ids`` and sample up to ``max_tokens``. ``on_token(id)`` sees each token as it is
        sampled and ends the generation by returning True (a stop string). ``reuse_cache``: keep the K/V of
        the longest prefix of ``prompt_ids`` the cache already holds (a chat's earlier turns) and prefill only
        the rest; the logits are those of a prefill from scratch (the same kernels over the same K/V)."""
        prompt_ids = [int(t) for t in prompt_ids]
        if not prompt_ids:
            raise LlamaAotError("empty prompt: give at least one token")
        bad = [t for t in prompt_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise LlamaAotError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        common = _common_prefix(self.cached_ids, prompt_ids) if reuse_cache else 0
        common = min(common, len(prompt_ids) - 1)  # the last prompt token is fed again for its logits
        if common:
            self.rewind(common)
            common = len(self.cached_ids)  # 0 where a sliding cache had to start over
        else:
            self.reset()
        rng = np.random.default_rng(seed)
        gen = Generation(prompt_ids=prompt_ids, reused_tokens=common)
        t0 = t_call = time.perf_counter()
        logits = self.prefill(prompt_ids[common:])
        gen.prefill_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        for step in range(max_tokens):
            if keep_logits:
                gen.logits.append(logits.copy())
            token = sample(logits, temperature, top_p, rng)
            if not step:
                gen.first_token_seconds = time.perf_counter() - t_call
            gen.token_ids.append(token)
            if on_token and on_token(token):
                gen.stop_reason = "stop"
                break
            if stop_on_eos and token in self.eos_token_ids:
                gen.stop_reason = "eos"
                break
            if step + 1 == max_tokens or (not self.unbounded and len(self.cached_ids) + 1 > self.context_window):
                break
            logits = self.decode(token)
            gen.decode_steps += 1
        gen.decode_seconds = time.perf_counter() - t0
        return gen


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
