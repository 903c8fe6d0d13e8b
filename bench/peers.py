"""Peers for ``llama-aot bench``, measured in the same run on the same weights.

* **llama.cpp** — :func:`write_gguf` converts a Hugging Face Llama 3 directory to GGUF the way
  llama.cpp's ``convert_hf_to_gguf.py`` (``LlamaModel``) does, :func:`quantize_gguf` runs the
  built ``llama-quantize``, :func:`measure_llama_cpp` runs the built ``llama-bench``. The binaries
  are found through ``LLAMA_CPP_DIR`` (see bench/README.md); without them
  :func:`measure_llama_cpp` returns None and :func:`llama_cpp_unavailable_reason` says why.
* **PyTorch eager** — :func:`measure_torch` runs transformers' ``LlamaForCausalLM`` in float32
  (eager attention, KV cache) in a subprocess (``python -m bench.peers torch ...``) so its
  peak RSS is its own.
* **ExecuTorch + XNNPACK** (optional) — :func:`export_executorch` converts the checkpoint to
  Meta's format (:func:`write_meta_checkpoint`) and runs ExecuTorch's ``export_llm`` (8da4w,
  group 32, KV cache, sdpa-with-kv-cache op); :func:`measure_executorch` runs the ``.pte`` with
  ``executorch.runtime`` in a subprocess. :func:`executorch_unavailable_reason` says why not.

Measurement definitions (the same for every engine in the benchmark):

* prefill tok/s: ``prompt_tokens`` / time of one forward over the prompt (logits of the last
  position only, like ``generate()`` and llama.cpp);
* decode tok/s: ``gen_tokens`` / time of ``gen_tokens`` one-token steps with the KV cache,
  starting after the ``prompt_tokens``-token prompt (llama-bench: ``tg<gen> @ d<prompt>``);
* peak RSS in MiB of the process doing the work (its own high-water mark; see
  :func:`peak_rss_mb_self` for why not ``ru_maxrss``).

CLI (used by bench/e2e.py)::

    python -m bench.peers torch MODEL_DIR [--prompt 128] [--gen 64] [--threads 2]
    python -m bench.peers gguf MODEL_DIR OUT.gguf [--outtype f32|f16]
    python -m bench.peers quantize SRC.gguf DST.gguf Q4_0|Q8_0
    python -m bench.peers llama-cpp MODEL.gguf [--prompt 128] [--gen 64] [--threads 2]
    python -m bench.peers executorch-export MODEL_DIR OUT.pte [--max-context 256]
    python -m bench.peers executorch MODEL.pte [--prompt 128] [--gen 64] [--threads 2]

each printing one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LLAMA_CPP_DIR = Path("/work/peers/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin")
LLAMA_CPP_ENV = "LLAMA_CPP_DIR"

# tokenizer.json pre-tokenizer regex of Llama 3 (tiktoken cl100k-style); llama.cpp calls it "llama-bpe".
_LLAMA3_PRETOK_MARK = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
# convert_hf_to_gguf.py's chkhsh for meta-llama/Meta-Llama-3-8B (and every Llama 3.x tokenizer).
_LLAMA_BPE_CHKHSH = "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5"

# gguf.TokenType values (kept here so this module imports without gguf).
_TT_NORMAL, _TT_CONTROL, _TT_USER_DEFINED, _TT_UNUSED = 1, 3, 4, 5


# =========================================================================== GGUF writing


def llama3_rope_factors(head_dim: int, rope_theta: float, factor: float, low_freq_factor: float,
                        high_freq_factor: float, original_max_position_embeddings: int) -> np.ndarray:
    """The ``rope_freqs`` tensor llama.cpp's converter writes for ``rope_type == "llama3"``.

    Same computation as ``LlamaModel.generate_extra_tensors`` in convert_hf_to_gguf.py: per
    rotary frequency, 1 for short wavelengths, ``factor`` for long ones, and the smooth
    interpolation between; llama.cpp divides the frequencies by these at run time.
    """
    # float32 arithmetic throughout, as the converter does it with torch float32 tensors
    # (numpy >= 2 keeps np.float32 op Python-scalar in float32), so the factors match bit for bit.
    f32 = np.float32
    freqs = f32(1.0) / (f32(rope_theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / f32(head_dim)))
    low_freq_wavelen = original_max_position_embeddings / low_freq_factor
    high_freq_wavelen = original_max_position_embeddings / high_freq_factor
    out = []
    for freq in freqs:
        wavelen = f32(2 * math.pi) / freq
        if wavelen < high_freq_wavelen:
            out.append(1.0)
        elif wavelen > low_freq_wavelen:
            out.append(factor)
        else:
            smooth = (f32(original_max_position_embeddings) / wavelen - f32(low_freq_factor)) / f32(high_freq_factor - low_freq_factor)
            out.append(f32(1) / ((f32(1) - smooth) / f32(factor) + smooth))
    return np.asarray(out, dtype=np.float32)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """``LlamaModel.permute`` of convert_hf_to_gguf.py: HF's rotate-half row order -> GGML's
    interleaved-pairs order, per head. ``n_head`` is the number of heads of *this* projection
    (num_attention_heads for q_proj, num_key_value_heads for k_proj)."""
    rows = w.shape[0]
    return np.ascontiguousarray(w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def _rename_hf(name: str, top: dict[str, str], parts: dict[str, str], layer_fmt: str) -> str | None:
    """A Hugging Face Llama tensor name in another format: ``top`` maps whole names, ``parts`` the
    per-layer module path, ``layer_fmt`` builds the layer name from (index, part)."""
    if name in top:
        return top[name]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", name)
    part = parts.get(m.group(2)) if m else None
    return layer_fmt.format(m.group(1), part) if part else None


_HF_TOP = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")
_GGUF_TOP = dict(zip(_HF_TOP, ("token_embd.weight", "output_norm.weight", "output.weight")))
#: HF per-layer module -> (GGUF name, Meta/ExecuTorch name)
_LAYER_PARTS = {
    "input_layernorm": ("attn_norm", "attention_norm"),
    "self_attn.q_proj": ("attn_q", "attention.wq"),
    "self_attn.k_proj": ("attn_k", "attention.wk"),
    "self_attn.v_proj": ("attn_v", "attention.wv"),
    "self_attn.o_proj": ("attn_output", "attention.wo"),
    "post_attention_layernorm": ("ffn_norm", "ffn_norm"),
    "mlp.gate_proj": ("ffn_gate", "feed_forward.w1"),
    "mlp.up_proj": ("ffn_up", "feed_forward.w3"),
    "mlp.down_proj": ("ffn_down", "feed_forward.w2"),
}
_GGUF_PARTS = {k: v[0] for k, v in _LAYER_PARTS.items()}


def _hf_to_gguf_name(name: str) -> str | None:
    return _rename_hf(name, _GGUF_TOP, _GGUF_PARTS, "blk.{}.{}.weight")


def write_gguf(hf_dir: str | Path, out_path: str | Path, outtype: str = "f32") -> Path:
    """Write a llama.cpp GGUF (architecture ``llama``) of the Hugging Face Llama 3 checkpoint in
    ``hf_dir`` (config.json + single or sharded safetensors, bf16/fp16/fp32) to ``out_path``.

    Follows convert_hf_to_gguf.py's ``LlamaModel``: the same hparam keys, Q/K rows permuted with
    :func:`permute_qk`, a ``rope_freqs`` tensor for llama3 rope scaling
    (:func:`llama3_rope_factors`), no ``output.weight`` when embeddings are tied, 1-D tensors
    (norms, rope_freqs) in F32 and 2-D weights in ``outtype`` ("f32" or "f16"). Tensors are
    streamed one at a time, so memory stays near one tensor. Vocabulary: a "gpt2" BPE vocab
    from tokenizer.json if present, else a synthetic byte-level one of the right size (random-
    weight benchmark models). Uniform layers only (llama.cpp's llama graph has one head count
    and FFN width for all layers).
    """
    import gguf

    from compiler.frontend.checkpoint import Checkpoint
    from compiler.frontend.config import load_spec

    if outtype not in ("f32", "f16"):
        raise ValueError(f"outtype must be 'f32' or 'f16', got {outtype!r}")
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    spec = load_spec(hf_dir)
    if not spec.is_uniform:
        raise ValueError(
            f"{hf_dir}: per-layer shapes (layer_shapes) differ; llama.cpp's llama architecture needs "
            "identical layers, so pruned checkpoints have no llama.cpp peer"
        )
    layer = spec.layers[0]
    ckpt = Checkpoint(hf_dir)
    ckpt.validate(spec)

    ftype = gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16
    wdtype = np.float32 if outtype == "f32" else np.float16

    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")  # renamed when complete: no half files
    w = gguf.GGUFWriter(partial, "llama")
    # -- general + hparams (TextModel.set_gguf_parameters + LlamaModel.set_gguf_parameters)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(hf_dir.name)
    w.add_block_count(spec.num_layers)
    w.add_context_length(spec.max_position_embeddings)
    w.add_embedding_length(spec.hidden_size)
    w.add_feed_forward_length(layer.intermediate_size)
    w.add_head_count(layer.num_attention_heads)
    w.add_head_count_kv(layer.num_key_value_heads)
    w.add_rope_freq_base(spec.rope_theta)
    w.add_layer_norm_rms_eps(spec.rms_norm_eps)
    w.add_key_length(spec.head_dim)
    w.add_value_length(spec.head_dim)
    w.add_file_type(ftype)
    w.add_vocab_size(spec.vocab_size)
    w.add_rope_dimension_count(spec.head_dim)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_vocab(w, hf_dir, spec)

    # -- tensors: (gguf name, hf name or None for rope_freqs, numpy shape, dtype)
    plan: list[tuple[str, str | None, tuple[int, ...], type]] = []
    rope_freqs = None
    if spec.rope_scaling is not None:
        rs = spec.rope_scaling
        rope_freqs = llama3_rope_factors(spec.head_dim, spec.rope_theta, rs.factor, rs.low_freq_factor,
                                         rs.high_freq_factor, rs.original_max_position_embeddings)
        plan.append(("rope_freqs.weight", None, rope_freqs.shape, np.float32))
    for hf_name in ckpt.names():
        if spec.tie_word_embeddings and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd; convert_hf_to_gguf drops the copy too
        name = _hf_to_gguf_name(hf_name)
        if name is None:
            continue  # e.g. rotary_emb.inv_freq buffers; validate() rejected anything else
        shape, _ = ckpt.info(hf_name)
        dtype = np.float32 if len(shape) <= 1 or name.endswith("_norm.weight") else wdtype
        plan.append((name, hf_name, tuple(shape), dtype))
    for name, _, shape, dtype in plan:
        w.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)

    w.write_header_to_file(partial)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, hf_name, shape, dtype in plan:
        if hf_name is None:
            data = rope_freqs
        else:
            data = ckpt.read(hf_name)
            if hf_name.endswith("self_attn.q_proj.weight"):
                data = permute_qk(data, layer.num_attention_heads)
            elif hf_name.endswith("self_attn.k_proj.weight"):
                data = permute_qk(data, layer.num_key_value_heads)
        w.write_tensor_data(np.ascontiguousarray(data, dtype=dtype))
        del data
    w.close()
    os.replace(partial, out_path)
    return out_path


def _add_vocab(w, hf_dir: Path, spec) -> None:
    tok_file = hf_dir / "tokenizer.json"
    if tok_file.is_file():
        _add_tokenizer_json_vocab(w, hf_dir, tok_file, spec)
    else:
        _add_synthetic_vocab(w, spec)


def _add_tokenizer_json_vocab(w, hf_dir: Path, tok_file: Path, spec) -> None:
    """gpt2 BPE vocab like ``_set_vocab_gpt2``: tokens by id (``[PAD<i>]`` UNUSED for holes up to
    vocab_size), added special tokens CONTROL, other added tokens USER_DEFINED, merges and
    special ids / add_bos / chat template via gguf.SpecialVocab."""
    import gguf

    tj = json.loads(tok_file.read_text(encoding="utf-8"))
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{tok_file}: tokenizer model {model.get('type')!r} is not BPE; only Llama 3 (gpt2-style BPE) tokenizers are supported")
    V = spec.vocab_size
    by_id: dict[int, tuple[str, int]] = {i: (t, _TT_NORMAL) for t, i in model["vocab"].items()}
    for at in tj.get("added_tokens") or []:
        special = at.get("special") or _looks_special(at["content"])
        by_id[at["id"]] = (at["content"], _TT_CONTROL if special else _TT_USER_DEFINED)
    if by_id and max(by_id) >= V:
        raise ValueError(f"{tok_file} has token id {max(by_id)} but vocab_size is {V}")
    tokens, types = [], []
    for i in range(V):
        t, tt = by_id.get(i, (f"[PAD{i}]", _TT_UNUSED))
        tokens.append(t)
        types.append(tt)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(_pre_tokenizer_name(tok_file, tj))
    w.add_token_list(tokens)
    w.add_token_types(types)
    sv = gguf.SpecialVocab(hf_dir, load_merges=True, n_vocab=V)
    if not sv.merges:
        raise ValueError(f"{tok_file} has no BPE merges; llama.cpp cannot load a gpt2 vocab without them")
    if "bos" not in sv.special_token_ids and spec.bos_token_id is not None:
        sv.special_token_ids["bos"] = spec.bos_token_id
    if "eos" not in sv.special_token_ids and spec.eos_token_ids:
        sv.special_token_ids["eos"] = spec.eos_token_ids[0]
    sv.add_to_gguf(w, quiet=True)


def _looks_special(tok: str) -> bool:
    return tok.startswith("<|") and tok.endswith("|>")


def _pre_tokenizer_name(tok_file: Path, tj: dict) -> str:
    """"llama-bpe" for the Llama 3 pre-tokenizer (by convert_hf_to_gguf's hash of the encoded
    check text when `tokenizers` is installed, else by the split regex), else "default".
    llama.cpp only hashes in the converter; at load time it accepts any known name."""
    try:
        from hashlib import sha256

        from tokenizers import Tokenizer

        chktxt = _CHKTXT
        ids = Tokenizer.from_file(str(tok_file)).encode(chktxt).ids
        if sha256(str(ids).encode()).hexdigest() == _LLAMA_BPE_CHKHSH:
            return "llama-bpe"
    except Exception:
        pass
    return "llama-bpe" if _LLAMA3_PRETOK_MARK in json.dumps(tj.get("pre_tokenizer")) else "default"


# convert_hf_to_gguf.py's get_vocab_base_pre check text.
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
    "✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)


def _gpt2_byte_chars() -> list[str]:
    """GPT-2's bytes_to_unicode(): the printable character standing for each byte 0..255."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def _add_synthetic_vocab(w, spec) -> None:
    """A gpt2 vocab of exactly vocab_size tokens for checkpoints without a tokenizer: bos/eos ids
    from config.json as CONTROL tokens ``<|bos|>``/``<|eos|>``, then the 256 byte-level tokens
    (so any text tokenizes), then ``<t{i}>`` fillers. One merge (``Ġ Ġ``) because llama.cpp
    refuses a gpt2 vocab without a merges array and gguf-py skips empty arrays."""
    V = spec.vocab_size
    specials: dict[int, str] = {}
    if spec.bos_token_id is not None and spec.bos_token_id < V:
        specials[spec.bos_token_id] = "<|bos|>"
    for k, e in enumerate(spec.eos_token_ids):
        if e < V and e not in specials:
            specials[e] = "<|eos|>" if k == 0 else f"<|eos{k}|>"
    fill = iter(_gpt2_byte_chars() + ["ĠĠ"])
    tokens, types = [], []
    for i in range(V):
        if i in specials:
            tokens.append(specials[i])
            types.append(_TT_CONTROL)
        else:
            tokens.append(next(fill, f"<t{i}>"))
            types.append(_TT_NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["Ġ Ġ"])
    if spec.bos_token_id is not None and spec.bos_token_id < V:
        w.add_bos_token_id(spec.bos_token_id)
        w.add_add_bos_token(True)
    if spec.eos_token_ids and spec.eos_token_ids[0] < V:
        w.add_eos_token_id(spec.eos_token_ids[0])


# =========================================================================== llama.cpp binaries


@dataclass(frozen=True)
class LlamaCppTools:
    bin_dir: Path
    bench: Path
    quantize: Path

    @property
    def source_dir(self) -> Path | None:
        """The llama.cpp source tree (for include/llama.h) when bin_dir is ``<src>/build/bin``."""
        for cand in (self.bin_dir.parent.parent, self.bin_dir.parent):
            if (cand / "include" / "llama.h").is_file() and (cand / "ggml" / "include" / "ggml.h").is_file():
                return cand
        return None


def llama_cpp_bin_dir() -> Path:
    """``$LLAMA_CPP_DIR`` if set, else the default build location."""
    env = os.environ.get(LLAMA_CPP_ENV)
    return Path(env) if env else DEFAULT_LLAMA_CPP_DIR


def find_llama_cpp() -> LlamaCppTools | None:
    d = llama_cpp_bin_dir()
    bench, quant = d / "llama-bench", d / "llama-quantize"
    if bench.is_file() and os.access(bench, os.X_OK) and quant.is_file() and os.access(quant, os.X_OK):
        return LlamaCppTools(d, bench, quant)
    return None


def llama_cpp_unavailable_reason() -> str | None:
    """None when llama-bench and llama-quantize are found, else a one-line reason."""
    if find_llama_cpp() is not None:
        return None
    d = llama_cpp_bin_dir()
    src = f"${LLAMA_CPP_ENV}" if os.environ.get(LLAMA_CPP_ENV) else "default location"
    missing = [n for n in ("llama-bench", "llama-quantize") if not (d / n).is_file()]
    return f"llama.cpp not available: {', '.join(missing) or 'binaries'} not found in {d} ({src}); see bench/README.md"


def _require_tools() -> LlamaCppTools:
    tools = find_llama_cpp()
    if tools is None:
        raise FileNotFoundError(llama_cpp_unavailable_reason())
    return tools


def peak_rss_mb_self() -> float:
    """Peak RSS of this process in MiB (VmHWM; see runtime_stubs.engine.peak_rss_mb)."""
    from runtime_stubs.engine import peak_rss_mb

    return peak_rss_mb()


def _gnu_time() -> str | None:
    t = "/usr/bin/time"
    if os.access(t, os.X_OK):
        try:
            ok = subprocess.run([t, "-f", "%M", "-o", os.devnull, "true"], capture_output=True).returncode == 0
        except OSError:
            ok = False
        return t if ok else None
    return None


def _run_with_peak_rss(cmd: list[str], timeout: float | None = None) -> tuple[int, str, str, float]:
    """Run ``cmd``; return (returncode, stdout, stderr, peak RSS MiB of that command alone).

    With GNU time (``/usr/bin/time -f %M``: the max RSS its own small child reached), else by
    polling ``VmHWM`` in /proc/<pid>/status every 10 ms (may miss growth in the last 10 ms).
    Never ``ru_maxrss`` of a direct child of this process: it inherits this process's peak
    (see :func:`peak_rss_mb_self`)."""
    with tempfile.TemporaryDirectory() as td:
        gtime = _gnu_time()
        rss_file = Path(td) / "maxrss"
        full = [gtime, "-f", "%M", "-o", str(rss_file), *cmd] if gtime else list(cmd)
        out_f, err_f = open(Path(td) / "out", "w+b"), open(Path(td) / "err", "w+b")
        with out_f, err_f:
            p = subprocess.Popen(full, stdout=out_f, stderr=err_f)
            deadline = None if timeout is None else time.monotonic() + timeout
            hwm_kb = 0
            while p.poll() is None:
                if not gtime:
                    try:
                        with open(f"/proc/{p.pid}/status") as f:
                            for line in f:
                                if line.startswith("VmHWM:"):
                                    hwm_kb = max(hwm_kb, int(line.split()[1]))
                    except (OSError, ValueError, IndexError):
                        pass
                if deadline is not None and time.monotonic() > deadline:
                    p.kill()
                    p.wait()
                    raise subprocess.TimeoutExpired(cmd, timeout)
                time.sleep(0.01)
            if gtime:
                try:
                    hwm_kb = int(rss_file.read_text().split()[-1])
                except (OSError, ValueError, IndexError):
                    hwm_kb = 0
            out_f.seek(0)
            err_f.seek(0)
            return p.returncode, out_f.read().decode(errors="replace"), err_f.read().decode(errors="replace"), hwm_kb / 1024.0


def quantize_gguf(src: str | Path, dst: str | Path, qtype: str = "Q4_0", *, pure: bool = False,
                  threads: int | None = None) -> Path:
    """``llama-quantize SRC DST QTYPE`` (e.g. "Q4_0", "Q8_0"). With llama.cpp's default rules
    some tensors (token_embd / output) may get another type; ``pure=True`` passes ``--pure``."""
    tools = _require_tools()
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")  # renamed when complete: no half files
    cmd = [str(tools.quantize)] + (["--pure"] if pure else []) + [str(src), str(tmp), qtype]
    if threads:
        cmd.append(str(threads))
    rc, out, err, _ = _run_with_peak_rss(cmd)
    if rc != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama-quantize {qtype} failed (exit {rc}):\n{(out + err)[-2000:]}")
    os.replace(tmp, dst)
    return dst


def _llama_bench(tools: LlamaCppTools, gguf_path: Path, args: list[str], threads: int, reps: int) -> tuple[list[dict], float]:
    cmd = [str(tools.bench), "-m", str(gguf_path), "-t", str(threads), "-r", str(reps), "-o", "json", *args]
    rc, out, err, rss = _run_with_peak_rss(cmd)
    if rc != 0:
        raise RuntimeError(f"llama-bench failed (exit {rc}): {' '.join(cmd)}\n{(out + err)[-2000:]}")
    start = out.find("[")
    try:
        records = json.loads(out[start:])
    except (ValueError, json.JSONDecodeError):
        raise RuntimeError(f"cannot parse llama-bench JSON output:\n{out[-2000:]}") from None
    return records, rss


def measure_llama_cpp(gguf_path: str | Path, prompt_tokens: int = 128, gen_tokens: int = 64, threads: int = 2,
                      reps: int = 3) -> dict | None:
    """llama.cpp on ``gguf_path`` via ``llama-bench``; None when the binaries are not built
    (``llama_cpp_unavailable_reason()`` says why).

    Two llama-bench runs, each with ``-r reps`` (llama-bench averages them; its warm-up run is
    not counted): ``-p prompt_tokens -n 0`` for prefill and ``-p 0 -n gen_tokens -d prompt_tokens``
    for decode after a ``prompt_tokens``-token context, matching the other engines. Returns
    {"prefill_tok_s", "decode_tok_s", "peak_rss_mb", "prefill_stddev", "decode_stddev",
    "build"}; peak RSS is the larger of the two llama-bench processes' own peaks
    (:func:`_run_with_peak_rss`).
    """
    tools = find_llama_cpp()
    if tools is None:
        return None
    gguf_path = Path(gguf_path)
    pp, rss_p = _llama_bench(tools, gguf_path, ["-p", str(prompt_tokens), "-n", "0"], threads, reps)
    tg, rss_t = _llama_bench(tools, gguf_path, ["-p", "0", "-n", str(gen_tokens), "-d", str(prompt_tokens)], threads, reps)
    p = next(r for r in pp if r.get("n_prompt") == prompt_tokens and r.get("n_gen") == 0)
    g = next(r for r in tg if r.get("n_gen") == gen_tokens and r.get("n_prompt") == 0)
    return {
        "prefill_tok_s": float(p["avg_ts"]),
        "decode_tok_s": float(g["avg_ts"]),
        "peak_rss_mb": max(rss_p, rss_t),
        "prefill_stddev": float(p.get("stddev_ts", 0.0)),
        "decode_stddev": float(g.get("stddev_ts", 0.0)),
        "build": f"{p.get('build_commit', '?')} ({p.get('cpu_info', '?')})",
    }


# =========================================================================== llama.cpp logits (validation)

_DUMPER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "llama.h"

static void log_cb(enum ggml_log_level level, const char * text, void * ud) {
    (void) ud;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

/* usage: dump MODEL info OUT
          dump MODEL tokenize OUT TEXT
          dump MODEL logits OUT THREADS ID... */
int main(int argc, char ** argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s MODEL info|tokenize|logits OUT ...\n", argv[0]); return 1; }
    llama_log_set(log_cb, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "failed to load %s\n", argv[1]); return 2; }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    FILE * out = fopen(argv[3], "wb");
    if (!out) { fprintf(stderr, "cannot open %s\n", argv[3]); return 1; }
    int rc = 0;
    if (!strcmp(argv[2], "info")) {
        char desc[256];
        llama_model_desc(model, desc, sizeof desc);
        fprintf(out, "{\"n_params\": %llu, \"size\": %llu, \"n_vocab\": %d, \"desc\": \"%s\"}\n",
                (unsigned long long) llama_model_n_params(model), (unsigned long long) llama_model_size(model), n_vocab, desc);
    } else if (!strcmp(argv[2], "tokenize") && argc >= 5) {
        const char * text = argv[4];
        int cap = (int) strlen(text) + 16;
        llama_token * toks = malloc(sizeof(llama_token) * cap);
        int n = llama_tokenize(vocab, text, (int) strlen(text), toks, cap, true, false);
        if (n < 0) { cap = -n; toks = realloc(toks, sizeof(llama_token) * cap); n = llama_tokenize(vocab, text, (int) strlen(text), toks, cap, true, false); }
        for (int i = 0; i < n; i++) fprintf(out, "%d\n", toks[i]);
        free(toks);
    } else if (!strcmp(argv[2], "logits") && argc >= 6) {
        const int threads = atoi(argv[4]);
        const int n = argc - 5;
        struct llama_context_params cp = llama_context_default_params();
        cp.n_ctx = (uint32_t) (n < 64 ? 64 : n);
        cp.n_batch = cp.n_ctx;
        cp.n_ubatch = cp.n_ctx;
        cp.n_threads = threads;
        cp.n_threads_batch = threads;
        cp.type_k = GGML_TYPE_F32;  /* exact KV cache: compare the weights, not f16 cache rounding */
        cp.type_v = GGML_TYPE_F32;
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
        struct llama_context * ctx = llama_init_from_model(model, cp);
        if (!ctx) { fprintf(stderr, "failed to create context\n"); return 3; }
        struct llama_batch b = llama_batch_init(n, 0, 1);
        for (int i = 0; i < n; i++) {
            b.token[i] = atoi(argv[5 + i]);
            b.pos[i] = i;
            b.n_seq_id[i] = 1;
            b.seq_id[i][0] = 0;
            b.logits[i] = 1;
        }
        b.n_tokens = n;
        if (llama_decode(ctx, b) != 0) { fprintf(stderr, "llama_decode failed\n"); rc = 4; }
        else for (int i = 0; i < n; i++) fwrite(llama_get_logits_ith(ctx, i), sizeof(float), n_vocab, out);
        llama_batch_free(b);
        llama_free(ctx);
    } else { fprintf(stderr, "bad arguments\n"); rc = 1; }
    fclose(out);
    llama_model_free(model);
    return rc;
}
"""


def build_logits_dumper(workdir: str | Path, tools: LlamaCppTools | None = None) -> Path:
    """Compile a ~100-line C program against the built libllama (no cmake target needed) that
    loads a GGUF and prints model info, tokenizes text, or dumps the logits of every position
    of a token sequence. Used to validate :func:`write_gguf` against transformers."""
    tools = tools or _require_tools()
    src_dir = tools.source_dir
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if src_dir is None or cc is None or not any(tools.bin_dir.glob("libllama.*")):
        raise FileNotFoundError(f"need a C compiler, libllama in {tools.bin_dir} and llama.h in its source tree")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    c = workdir / "llama_dump.c"
    exe = workdir / "llama_dump"
    c.write_text(_DUMPER_C)
    cmd = [cc, "-O1", "-std=c11", str(c), f"-I{src_dir / 'include'}", f"-I{src_dir / 'ggml' / 'include'}",
           f"-L{tools.bin_dir}", "-lllama", f"-Wl,-rpath,{tools.bin_dir}", "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling the logits dumper failed:\n{proc.stderr[-2000:]}")
    return exe


def llama_cpp_model_info(dumper: Path, gguf_path: str | Path) -> dict:
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "info.json"
        _run_checked([str(dumper), str(gguf_path), "info", str(out)])
        return json.loads(out.read_text())


def llama_cpp_tokenize(dumper: Path, gguf_path: str | Path, text: str) -> list[int]:
    """Token ids llama.cpp gives ``text`` (add_special=True: BOS when the vocab asks for it)."""
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "ids.txt"
        _run_checked([str(dumper), str(gguf_path), "tokenize", str(out), text])
        return [int(x) for x in out.read_text().split()]


def llama_cpp_logits(dumper: Path, gguf_path: str | Path, token_ids: list[int], threads: int = 2) -> np.ndarray:
    """float32 [len(token_ids), n_vocab] logits of every position, one llama_decode call."""
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "logits.bin"
        _run_checked([str(dumper), str(gguf_path), "logits", str(out), str(threads), *map(str, token_ids)])
        return np.fromfile(out, dtype=np.float32).reshape(len(token_ids), -1)


def _run_checked(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} {cmd[2]} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")


# =========================================================================== PyTorch eager


def prompt_ids(n: int, vocab: int) -> list[int]:
    """Deterministic spread-out token ids: the prompt every engine of a bench run gets."""
    return [(7919 * i + 17) % (vocab - 10) + 5 for i in range(n)]


def _best_of(generate, prompt_tokens: int, gen_tokens: int, reps: int) -> dict:
    """``generate(n_prompt, n_gen) -> (prefill_s, decode_s)``: one warm-up, then the best of ``reps``
    runs, as tok/s, plus this process's peak RSS."""
    generate(8, 2)
    prefill = decode = 0.0
    for _ in range(reps):
        tp, td = generate(prompt_tokens, gen_tokens)
        prefill = max(prefill, prompt_tokens / tp)
        decode = max(decode, gen_tokens / td)
    return {"prefill_tok_s": prefill, "decode_tok_s": decode, "peak_rss_mb": peak_rss_mb_self()}


def _torch_generate(model, ids: list[int], gen_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds): one forward over ``ids`` (last-position logits only,
    as generate() does), then ``gen_tokens`` greedy one-token steps with the KV cache."""
    import torch

    x = torch.tensor([ids], dtype=torch.long)
    t0 = time.perf_counter()
    out = model(input_ids=x, use_cache=True, logits_to_keep=1)
    tok = out.logits[:, -1].argmax(-1, keepdim=True)
    t1 = time.perf_counter()
    past = out.past_key_values
    for _ in range(gen_tokens):
        out = model(input_ids=tok, past_key_values=past, use_cache=True)
        past = out.past_key_values
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def measure_torch_inprocess(hf_dir: str | Path, prompt_tokens: int = 128, gen_tokens: int = 64, threads: int = 2,
                            reps: int = 2) -> dict:
    """transformers LlamaForCausalLM, float32, eager attention, ``threads`` intra-op threads.
    One warm-up (8-token prompt, 2 decode steps), then ``reps`` runs, best of each rate.
    Call it through :func:`measure_torch` (a subprocess) for a meaningful peak RSS."""
    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(threads)
    model = LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    ids = prompt_ids(prompt_tokens, model.config.vocab_size)
    with torch.inference_mode():
        best = _best_of(lambda n, g: _torch_generate(model, ids[:n], g), prompt_tokens, gen_tokens, reps)
    return {
        **best,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _measure_in_child(engine: str, model: str | Path, prompt_tokens: int, gen_tokens: int, threads: int,
                      reps: int, timeout: float | None) -> dict:
    """``python -m bench.peers ENGINE MODEL ...`` in a fresh process (so the peak RSS is that engine's
    alone); returns the JSON its last stdout line holds."""
    cmd = [sys.executable, "-m", "bench.peers", engine, str(model), "--prompt", str(prompt_tokens),
           "--gen", str(gen_tokens), "--threads", str(threads), "--reps", str(reps)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} peer failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_torch(hf_dir: str | Path, prompt_tokens: int = 128, gen_tokens: int = 64, threads: int = 2,
                  reps: int = 2, timeout: float | None = None) -> dict:
    """:func:`measure_torch_inprocess` in ``python -m bench.peers torch`` (a fresh process, so
    the peak RSS is torch's alone); returns {"prefill_tok_s", "decode_tok_s", "peak_rss_mb", ...}."""
    return _measure_in_child("torch", hf_dir, prompt_tokens, gen_tokens, threads, reps, timeout)


# =========================================================================== ExecuTorch (XNNPACK)

EXECUTORCH_QMODE = "8da4w"  # int4 weights (symmetric, per group), dynamic per-token int8 activations
EXECUTORCH_GROUP_SIZE = 32
EXECUTORCH_EMBEDDING_QUANT = "4,32"  # export_llm's stock XNNPACK recipe (examples/models/llama/config/llama_xnnpack.yaml)


def executorch_unavailable_reason() -> str | None:
    """None when ``executorch`` (with its pybindings runtime and the llama export code) imports,
    else a one-line reason. Only ``importlib.util.find_spec``: importing executorch costs seconds."""
    import importlib.util

    for mod in ("executorch", "executorch.extension.llm.export", "executorch.runtime"):
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return (f"ExecuTorch not available: cannot import {mod} "
                    "(pip install executorch==1.5.1 next to torch 2.13.0; see bench/README.md)")
    return None


def meta_params(spec) -> dict:
    """``params.json`` of Meta's llama checkpoint format for a uniform :class:`ModelSpec`
    (what ExecuTorch's ``examples/models/llama`` ``ModelArgs`` reads). ``hidden_dim`` is given
    directly instead of Meta's ``multiple_of`` / ``ffn_dim_multiplier`` rounding."""
    if not spec.is_uniform:
        raise ValueError("per-layer shapes (layer_shapes) differ; ExecuTorch's Llama needs identical layers")
    layer = spec.layers[0]
    params = {
        "dim": spec.hidden_size,
        "n_layers": spec.num_layers,
        "n_heads": layer.num_attention_heads,
        "n_kv_heads": layer.num_key_value_heads,
        "head_dim": spec.head_dim,
        "hidden_dim": layer.intermediate_size,
        "vocab_size": spec.vocab_size,
        "norm_eps": spec.rms_norm_eps,
        "rope_theta": spec.rope_theta,
        "use_scaled_rope": False,
    }
    rs = spec.rope_scaling
    if rs is not None:
        # ExecuTorch's rope.apply_scaling hard-codes low_freq_factor 1 and original context 8192.
        if rs.low_freq_factor != 1 or rs.original_max_position_embeddings != 8192:
            raise ValueError(f"llama3 rope scaling {rs} is not expressible in ExecuTorch's ModelArgs "
                             "(it fixes low_freq_factor=1, original_max_position_embeddings=8192)")
        params.update(use_scaled_rope=True, rope_scale_factor=rs.factor, high_freq_factor=rs.high_freq_factor)
    return params


_META_TOP = dict(zip(_HF_TOP, ("tok_embeddings.weight", "norm.weight", "output.weight")))
_META_PARTS = {k: v[1] for k, v in _LAYER_PARTS.items()}


def _hf_to_meta_name(name: str) -> str | None:
    return _rename_hf(name, _META_TOP, _META_PARTS, "layers.{}.{}.weight")


def write_meta_checkpoint(hf_dir: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``consolidated.00.pth`` (tensors in their stored dtype) + ``params.json`` in Meta's llama format — the
    inputs of ExecuTorch's ``export_llm base.model_class=llama3`` — from a Hugging Face Llama 3
    directory. Q/K rows go back from HF's rotate-half order to Meta's interleaved pairs (the same
    permutation as :func:`permute_qk`, since GGML's layout is Meta's); tied embeddings are written
    out as ``output.weight`` (ExecuTorch's Llama has an untied output projection)."""
    import torch

    from compiler.frontend.checkpoint import Checkpoint
    from compiler.frontend.config import load_spec

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    spec = load_spec(hf_dir)
    params = meta_params(spec)
    layer = spec.layers[0]
    ckpt = Checkpoint(hf_dir)
    ckpt.validate(spec)
    sd: dict[str, torch.Tensor] = {}
    for hf_name in ckpt.names():
        name = _hf_to_meta_name(hf_name)
        if name is None:
            continue
        data = ckpt.read(hf_name)
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = permute_qk(data, layer.num_attention_heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = permute_qk(data, layer.num_key_value_heads)
        dtype = getattr(torch, ckpt.info(hf_name)[1], torch.float32)  # keep the stored dtype: lossless
        sd[name] = torch.from_numpy(np.ascontiguousarray(data)).to(dtype)
        del data
    if "output.weight" not in sd:
        if not spec.tie_word_embeddings:
            raise ValueError(f"{hf_dir}: no lm_head.weight and tie_word_embeddings is false")
        sd["output.weight"] = sd["tok_embeddings.weight"].clone()
    out_dir.mkdir(parents=True, exist_ok=True)
    pth, pj = out_dir / "consolidated.00.pth", out_dir / "params.json"
    tmp = out_dir / "consolidated.00.pth.partial"
    torch.save(sd, tmp)
    os.replace(tmp, pth)
    pj.write_text(json.dumps(params, indent=1))
    return pth, pj


def executorch_export_args(checkpoint: Path, params: Path, out_dir: Path, name: str, max_context: int,
                           bos_id: int | None = None, eos_ids: list[int] | None = None) -> list[str]:
    """Hydra overrides for ``python -m executorch.extension.llm.export.export_llm``: the stock
    XNNPACK recipe (KV cache, custom sdpa-with-kv-cache op, fp32 activations, 8da4w linears,
    4-bit group-32 embedding) with group size :data:`EXECUTORCH_GROUP_SIZE`."""
    meta = {"get_bos_id": bos_id if bos_id is not None else 128000, "get_eos_ids": eos_ids or [128009, 128001]}
    return [
        "base.model_class=llama3",
        f"base.checkpoint={checkpoint}",
        f"base.params={params}",
        f"base.metadata='{json.dumps(meta)}'",
        "model.use_kv_cache=True",
        "model.use_sdpa_with_kv_cache=True",
        "model.dtype_override=fp32",
        f"export.max_seq_length={max_context}",
        f"export.max_context_length={max_context}",
        f"export.output_dir={out_dir}",
        f"export.output_name={name}",
        f"quantization.qmode={EXECUTORCH_QMODE}",
        f"quantization.group_size={EXECUTORCH_GROUP_SIZE}",
        f"quantization.embedding_quantize='{EXECUTORCH_EMBEDDING_QUANT}'",
        "quantization.use_hqq=False",
        "backend.xnnpack.enabled=True",
        "backend.xnnpack.extended_ops=True",
    ]


def export_executorch(hf_dir: str | Path, out_pte: str | Path, max_context: int = 256,
                      timeout: float | None = None) -> Path:
    """Export ``hf_dir`` to an ExecuTorch ``.pte`` (XNNPACK, 8da4w group 32, KV cache of
    ``max_context`` positions) via :func:`write_meta_checkpoint` and ``export_llm`` in a
    subprocess. The Meta checkpoint is written next to ``out_pte`` and deleted afterwards."""
    from compiler.frontend.config import load_spec

    reason = executorch_unavailable_reason()
    if reason:
        raise FileNotFoundError(reason)
    hf_dir, out_pte = Path(hf_dir), Path(out_pte)
    spec = load_spec(hf_dir)
    # Not named after out_pte: ExecuTorch's llama model.py treats a checkpoint whose *path*
    # contains "8da4w" or "int8" as already quantized (and then fails on our bf16 weights).
    work = out_pte.parent / "executorch-export.tmp"
    if any(tag in str(work) for tag in ("8da4w", "int8")):
        raise ValueError(f"{work}: ExecuTorch's export misreads checkpoint paths containing '8da4w' or 'int8'; "
                         "use another workdir")
    pth, pj = write_meta_checkpoint(hf_dir, work)
    name = out_pte.stem + ".partial.pte"
    cmd = [sys.executable, "-m", "executorch.extension.llm.export.export_llm",
           *executorch_export_args(pth, pj, work, name, max_context, spec.bos_token_id, list(spec.eos_token_ids))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work, timeout=timeout)
    produced = work / name
    if proc.returncode != 0 or not produced.is_file():
        raise RuntimeError(f"ExecuTorch export_llm failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    os.replace(produced, out_pte)
    shutil.rmtree(work, ignore_errors=True)
    return out_pte


def measure_executorch_inprocess(pte: str | Path, prompt_tokens: int = 128, gen_tokens: int = 64, threads: int = 2,
                                 reps: int = 2) -> dict:
    """Run an exported llama ``.pte`` with ``executorch.runtime`` in this process: forward(tokens
    [1, n], input_pos [1]) returns the last position's logits. Prefill = one forward over the
    prompt; decode = ``gen_tokens`` greedy one-token steps after it. One warm-up (8-token prompt,
    2 steps), then ``reps`` runs, best of each rate (as :func:`measure_torch_inprocess`).
    Call it through :func:`measure_executorch` (a subprocess) for a meaningful peak RSS."""
    import torch
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    from executorch.runtime import Runtime

    # Register the kernels the .pte needs besides XNNPACK (as examples/models/llama/runner/native.py
    # does, after portable_lib): custom_ops (sdpa_with_kv_cache, update_cache) and quantized
    # (embedding_4bit).
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
    from executorch.kernels import quantized  # noqa: F401

    _unsafe_reset_threadpool(threads)
    torch.set_num_threads(threads)
    program = Runtime.get().load_program(Path(pte))
    method = program.load_method("forward")
    vocab = int(program.load_method("get_vocab_size").execute(())[0])  # export_llm's metadata method

    def run(ids: list[int], steps: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        logits = method.execute((torch.tensor([ids], dtype=torch.long), torch.tensor([0], dtype=torch.long)))[0]
        tok = int(logits.reshape(-1, logits.shape[-1])[-1].argmax())
        t1 = time.perf_counter()
        pos = len(ids)
        for _ in range(steps):
            logits = method.execute((torch.tensor([[tok]], dtype=torch.long), torch.tensor([pos], dtype=torch.long)))[0]
            tok = int(logits.reshape(-1, logits.shape[-1])[-1].argmax())
            pos += 1
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    ids = prompt_ids(prompt_tokens, vocab)
    best = _best_of(lambda n, g: run(ids[:n], g), prompt_tokens, gen_tokens, reps)
    import executorch.version as etv

    return {
        **best,
        "executorch": getattr(etv, "__version__", "?"),
        "threads": threads,
    }


def measure_executorch(pte: str | Path, prompt_tokens: int = 128, gen_tokens: int = 64, threads: int = 2,
                       reps: int = 2, timeout: float | None = None) -> dict:
    """:func:`measure_executorch_inprocess` in ``python -m bench.peers executorch`` (its own
    process, so the peak RSS is ExecuTorch's alone)."""
    return _measure_in_child("executorch", pte, prompt_tokens, gen_tokens, threads, reps, timeout)


# =========================================================================== CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def timing(sp):
        sp.add_argument("--prompt", type=int, default=128)
        sp.add_argument("--gen", type=int, default=64)
        sp.add_argument("--threads", type=int, default=2)

    t = sub.add_parser("torch", help="measure PyTorch eager fp32 in this process")
    t.add_argument("model_dir")
    timing(t)
    t.add_argument("--reps", type=int, default=2)
    g = sub.add_parser("gguf", help="write a GGUF from a Hugging Face directory")
    g.add_argument("model_dir")
    g.add_argument("out")
    g.add_argument("--outtype", default="f32", choices=["f32", "f16"])
    q = sub.add_parser("quantize", help="llama-quantize")
    q.add_argument("src")
    q.add_argument("dst")
    q.add_argument("qtype")
    q.add_argument("--pure", action="store_true")
    b = sub.add_parser("llama-cpp", help="measure llama.cpp (llama-bench) on a GGUF")
    b.add_argument("gguf")
    timing(b)
    b.add_argument("--reps", type=int, default=3)
    x = sub.add_parser("executorch-export", help="export a Hugging Face directory to an ExecuTorch .pte (8da4w g32)")
    x.add_argument("model_dir")
    x.add_argument("out")
    x.add_argument("--max-context", type=int, default=256)
    e = sub.add_parser("executorch", help="measure an ExecuTorch llama .pte in this process")
    e.add_argument("pte")
    timing(e)
    e.add_argument("--reps", type=int, default=2)
    a = p.parse_args(argv)

    if a.cmd == "torch":
        res = measure_torch_inprocess(a.model_dir, a.prompt, a.gen, a.threads, a.reps)
    elif a.cmd == "gguf":
        res = {"gguf": str(write_gguf(a.model_dir, a.out, a.outtype))}
    elif a.cmd == "executorch-export":
        res = {"pte": str(export_executorch(a.model_dir, a.out, a.max_context))}
    elif a.cmd == "executorch":
        res = measure_executorch_inprocess(a.pte, a.prompt, a.gen, a.threads, a.reps)
    elif a.cmd == "quantize":
        res = {"gguf": str(quantize_gguf(a.src, a.dst, a.qtype, pure=a.pure))}
    else:
        res = measure_llama_cpp(a.gguf, a.prompt, a.gen, a.threads, a.reps)
        if res is None:
            res = {"available": False, "reason": llama_cpp_unavailable_reason()}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
