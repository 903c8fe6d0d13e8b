#!/usr/bin/env python3
"""Train llama-aot's embedded default model: a tiny Llama-3-architecture LM.

Data: a fixed, explicit list of pure-Python CPython 3.11 standard-library
sources (present in every CPython 3.11 install), read from
``sysconfig.get_paths()["stdlib"]``.  Files are split *by file*: every 10th
file of the sorted list (index % 10 == 9) is held out for evaluation.

Steps (all deterministic given the same stdlib sources and --steps):
  1. train a byte-level BPE tokenizer (``tokenizers``; Llama-3 pre-tokenizer
     regex + ByteLevel, vocab 4096, <|begin_of_text|>=0, <|end_of_text|>=1);
  2. train ``transformers.LlamaForCausalLM`` (hidden 256, 4 layers, 8 heads of
     32, 2 KV heads, SwiGLU 768, RoPE theta 5e5 with llama3 scaling, tied
     embeddings) on the CPU with AdamW + linear warmup + cosine decay, bf16
     autocast, fp32 master weights;
  3. evaluate per-token held-out perplexity and the unigram baseline;
  4. save a Llama-3.2-layout HF checkpoint + tokenizer + TRAINING.md.

Usage:
  nice -n 10 python scripts/train_tiny_model.py                    # time-bounded
  python scripts/train_tiny_model.py --steps 2000 --max-minutes 0  # fixed steps
  python scripts/train_tiny_model.py --plan 15:900,100:950,...     # exact replay

With --max-minutes > 0 the total step count is planned from measured step
times (first at step 15, inside the warmup whose learning rate does not depend
on the total; then re-planned every --replan-every steps, since a shared CPU's
speed varies), capped by --steps.  TRAINING.md records the plan, and
``--plan`` replays it exactly (same data order, same learning rates).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

# On a shared, oversubscribed CPU, OpenMP threads spin-waiting at barriers
# make every op wait for a descheduled peer (measured ~5x slower steps with 2
# threads).  Passive waiting must be chosen before torch (libgomp) loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from evaluation.corpus import (  # noqa: E402  (the split eval reads too)
    HELDOUT_EVERY, STDLIB_FILES, corpus_sha256, doc_windows, read_sources, split_files,
)
DEFAULT_OUT = REPO_ROOT / "models" / "tiny-llama3"

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
BOS_ID = 0
EOS_ID = 1
VOCAB_SIZE = 4096
SEQ_LEN = 256

# Pre-tokenizer split pattern of the published Llama 3 tokenizer.json.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

MODEL_ARCH = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=32,
    hidden_act="silu",
    max_position_embeddings=2048,
    initializer_range=0.02,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    rope_scaling={
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 256,
        "rope_type": "llama3",
    },
    attention_bias=False,
    attention_dropout=0.0,
    mlp_bias=False,
    tie_word_embeddings=True,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
)



# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------


def train_tokenizer(texts, vocab_size: int = VOCAB_SIZE):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS_TOKEN, EOS_TOKEN],  # -> ids 0 and 1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    # Like Llama 3: encode() prepends <|begin_of_text|> unless add_special_tokens=False.
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS_TOKEN}:0 $A:0",
                pair=f"{BOS_TOKEN}:0 $A:0 {BOS_TOKEN}:1 $B:1",
                special_tokens=[(BOS_TOKEN, BOS_ID)],
            ),
        ]
    )
    assert tok.token_to_id(BOS_TOKEN) == BOS_ID and tok.token_to_id(EOS_TOKEN) == EOS_ID
    assert tok.get_vocab_size() == vocab_size, tok.get_vocab_size()
    return tok


def encode_docs(tok, texts) -> list[list[int]]:
    """Each document -> [bos] + tokens + [eos]."""
    encs = tok.encode_batch(texts, add_special_tokens=False)
    return [[BOS_ID] + e.ids + [EOS_ID] for e in encs]


# --------------------------------------------------------------------------
# evaluation helpers (also used by tests/test_tiny_model.py)
# --------------------------------------------------------------------------


def model_nll(model, docs, seq_len: int = SEQ_LEN, batch_size: int = 8, max_tokens=None):
    """Sum of next-token NLL (nats) and number of predicted tokens over docs."""
    import torch
    import torch.nn.functional as F

    windows = [w for d in docs for w in doc_windows(d, seq_len)]
    if max_tokens is not None:
        kept, n = [], 0
        for w in windows:
            if n >= max_tokens:
                break
            kept.append(w)
            n += len(w) - 1
        windows = kept
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        full = [w for w in windows if len(w) == seq_len + 1]
        tails = [w for w in windows if len(w) != seq_len + 1]
        for i in range(0, len(full), batch_size):
            x = torch.tensor(full[i : i + batch_size], dtype=torch.long)
            logits = model(input_ids=x[:, :-1]).logits.float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
            total += nll.item()
            count += x[:, 1:].numel()
        for w in tails:
            x = torch.tensor([w], dtype=torch.long)
            logits = model(input_ids=x[:, :-1]).logits.float()
            nll = F.cross_entropy(logits[0], x[0, 1:], reduction="sum")
            total += nll.item()
            count += len(w) - 1
    return total, count, windows


def unigram_counts(docs, vocab_size: int = VOCAB_SIZE):
    import numpy as np

    return np.bincount(np.concatenate([np.asarray(d, dtype=np.int64) for d in docs]), minlength=vocab_size)


def unigram_nll(counts, windows):
    """Add-one smoothed unigram NLL over the same targets as model_nll."""
    import numpy as np

    logp = np.log((counts + 1.0) / (counts.sum() + len(counts)))
    targets = np.concatenate([np.asarray(w[1:], dtype=np.int64) for w in windows])
    return float(-logp[targets].sum()), int(targets.size)


# --------------------------------------------------------------------------
# checkpoint layout
# --------------------------------------------------------------------------


def to_published_llama3_layout(cfg: dict, dtype: str = "float32") -> dict:
    """Rewrite a transformers-5 config dict into the layout of the published
    Llama 3.2 checkpoints (top-level rope_theta + rope_scaling, torch_dtype)."""
    cfg = dict(cfg)
    rope = dict(cfg.pop("rope_parameters", None) or {})
    if "rope_theta" in rope:
        cfg["rope_theta"] = float(rope.pop("rope_theta"))
    if rope:
        cfg["rope_scaling"] = {k: rope[k] for k in sorted(rope)}
    if "rope_scaling" in cfg and "type" in cfg["rope_scaling"]:
        cfg["rope_scaling"].setdefault("rope_type", cfg["rope_scaling"].pop("type"))
    cfg.pop("dtype", None)
    cfg["torch_dtype"] = dtype
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg.pop("pad_token_id", None) if cfg.get("pad_token_id") is None else None
    for k in ("output_hidden_states", "return_dict", "chunk_size_feed_forward", "is_encoder_decoder"):
        cfg.pop(k, None)
    return {k: cfg[k] for k in sorted(cfg)}


def write_tokenizer_files(tok, out: Path):
    tok.save(str(out / "tokenizer.json"))
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in ((BOS_ID, BOS_TOKEN), (EOS_ID, EOS_TOKEN))
    }
    tcfg = {
        "added_tokens_decoder": added,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": MODEL_ARCH["max_position_embeddings"],
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2) + "\n")


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


SAMPLE_PROMPTS = ("def ", "import os\n", "class ")
# A code model's "chat" (docs/chat.md): the conversation is one growing Python file. The system prompt is its
# first line, as a comment; each user message is code typed into the file and each reply the model's
# continuation of it, with nothing between them. No role markers: the model never saw any.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '# ' + message['content'] + '\\n' }}"
    "{% else %}{{ message['content'] }}{% endif %}{% endfor %}"
)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int, default=4000, help="total optimizer steps (upper bound if --max-minutes > 0)")
    ap.add_argument("--max-minutes", type=float, default=18.0, help="wall-clock budget of the training loop; 0 = no limit")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup-steps", type=int, default=40)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-bf16-autocast", action="store_true", help="train in plain fp32 (slower)")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--replan-every", type=int, default=100)
    ap.add_argument("--plan", default="", help="replay a recorded step plan 'step:total,...' (ignores --max-minutes)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    import torch.nn.functional as F
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM
    from tokenizers import Tokenizer

    t_start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if sys.version_info[:2] != (3, 11):
        print(f"warning: file list is for CPython 3.11, running {platform.python_version()}", flush=True)

    # ---- data + tokenizer
    train_files, heldout_files = split_files()
    train_texts = read_sources(train_files)
    heldout_texts = read_sources(heldout_files)
    sha = corpus_sha256(list(STDLIB_FILES), read_sources(STDLIB_FILES))
    t0 = time.time()
    tok = train_tokenizer(train_texts)  # tokenizer sees training files only
    t_tok = time.time() - t0
    train_docs = encode_docs(tok, train_texts)
    heldout_docs = encode_docs(tok, heldout_texts)
    stream = np.concatenate([np.asarray(d, dtype=np.int64) for d in train_docs])
    n_train_tok, n_held_tok = int(stream.size), sum(len(d) for d in heldout_docs)
    train_bytes = sum(len(t.encode()) for t in train_texts)
    held_bytes = sum(len(t.encode()) for t in heldout_texts)
    print(
        f"files: {len(train_files)} train ({train_bytes} B, {n_train_tok} tok), "
        f"{len(heldout_files)} held-out ({held_bytes} B, {n_held_tok} tok); "
        f"tokenizer trained in {t_tok:.1f}s; corpus sha256 {sha}",
        flush=True,
    )
    # round-trip check (ByteLevel decoder)
    for t in train_texts[:20] + heldout_texts:
        assert tok.decode(tok.encode(t).ids) == t, "tokenizer round-trip failed"

    # ---- model
    cfg = LlamaConfig(**MODEL_ARCH)
    model = LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model params: {n_params} (tied embeddings)", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )

    # The step budget is (re)planned from measured step times: first at step
    # 15 (inside the warmup, whose lr does not depend on the total), then every
    # --replan-every steps, because the shared CPU's speed varies.  The plan
    # ("step:total,...") is recorded; --plan replays it exactly.
    budget_s = 0.0 if args.plan else args.max_minutes * 60.0
    plan: list[tuple[int, int]] = []
    if args.plan:
        plan = [tuple(int(v) for v in item.split(":")) for item in args.plan.split(",")]
        total_steps = args.steps
    else:
        total_steps = args.steps
    probe_from, probe_to = 3, min(15, args.warmup_steps)

    # Cosine progress runs from 0 (end of warmup) to 1 (last step).  A re-plan
    # at step s keeps the progress reached at s and spreads the rest linearly
    # over the new remaining steps, so the learning rate stays continuous.
    anchor = [args.warmup_steps, 0.0]  # (step, progress at that step)

    def progress(step: int) -> float:
        a_step, a_prog = anchor
        if step <= a_step:
            return a_prog if step >= args.warmup_steps else 0.0
        return min(1.0, a_prog + (1.0 - a_prog) * (step - a_step) / max(1, total_steps - a_step))

    def set_total(step: int, new_total: int):
        nonlocal total_steps
        if step > args.warmup_steps:
            anchor[:] = [step, progress(step)]
        total_steps = new_total

    def lr_at(step: int) -> float:
        if step < args.warmup_steps:
            return args.lr * (step + 1) / args.warmup_steps
        prog = progress(step)
        return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * prog)))

    max_start = stream.size - (SEQ_LEN + 1)
    use_bf16 = not args.no_bf16_autocast
    model.train()
    t_train0 = time.time()
    t_mark, step_mark = None, 0
    losses = []
    step = 0
    stopped_early = False
    while step < total_steps:
        if step == probe_from:
            t_mark, step_mark = time.time(), step
        if args.plan:
            for s_at, tot in plan:
                if s_at == step:
                    set_total(step, tot)
        elif budget_s > 0 and (step == probe_to or (step > probe_to and step % args.replan_every == 0)):
            per_step = (time.time() - t_mark) / (step - step_mark)
            remaining = budget_s - (time.time() - t_train0)
            fit = step + int(max(0.0, remaining) / (per_step * 1.05))
            new_total = max(step + 1, args.warmup_steps + 1, min(args.steps, fit))
            if new_total != total_steps or not plan:
                set_total(step, new_total)
                plan.append((step, total_steps))
            print(f"timing: {per_step:.3f} s/step -> total_steps = {total_steps}", flush=True)
            t_mark, step_mark = time.time(), step
        if step >= total_steps:
            break
        starts = rng.integers(0, max_start + 1, size=args.batch_size)
        batch = torch.from_numpy(np.stack([stream[s : s + SEQ_LEN + 1] for s in starts]))
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB_SIZE), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % args.log_every == 0 or step == total_steps:
            el = time.time() - t_train0
            print(
                f"step {step}/{total_steps} loss {np.mean(losses[-args.log_every:]):.4f} "
                f"lr {lr_at(step - 1):.2e} elapsed {el / 60:.1f} min",
                flush=True,
            )
        if budget_s > 0 and time.time() - t_train0 > budget_s * 1.2:
            print(f"warning: over time budget, stopping at step {step}", flush=True)
            stopped_early = True
            break
    train_wall = time.time() - t_train0
    final_loss = float(np.mean(losses[-50:]))

    # ---- evaluation (fp32)
    t0 = time.time()
    nll, cnt, windows = model_nll(model, heldout_docs)
    counts = unigram_counts(train_docs)
    u_nll, u_cnt = unigram_nll(counts, windows)
    assert u_cnt == cnt
    ppl, uni_ppl = math.exp(nll / cnt), math.exp(u_nll / u_cnt)
    t_eval = time.time() - t0
    print(f"held-out: {cnt} tokens, ppl {ppl:.3f}, unigram ppl {uni_ppl:.3f} (eval {t_eval:.0f}s)", flush=True)

    # ---- save (fp32, Llama 3.2 layout)
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    cfg_path = out / "config.json"
    cfg_json = to_published_llama3_layout(json.loads(cfg_path.read_text()), "float32")
    cfg_path.write_text(json.dumps(cfg_json, indent=2) + "\n")
    write_tokenizer_files(tok, out)
    for f in out.iterdir():
        f.chmod(0o644)

    # ---- verify the saved directory
    tok2 = Tokenizer.from_file(str(out / "tokenizer.json"))
    m2 = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    m2.eval()
    rp = m2.config.rope_parameters
    assert rp["rope_type"] == "llama3" and float(rp["rope_theta"]) == 500000.0, rp
    probe = torch.tensor([windows[0][:-1]])
    with torch.no_grad():
        diff = (m2(input_ids=probe).logits - model.eval()(input_ids=probe).logits).abs().max().item()
    assert diff < 1e-4, f"reloaded model differs: {diff}"
    for t in heldout_texts:
        assert tok2.decode(tok2.encode(t).ids) == t
    samples = []
    for p in SAMPLE_PROMPTS:
        ids = torch.tensor([tok2.encode(p).ids])  # includes <|begin_of_text|>
        with torch.no_grad():
            gen = m2.generate(ids, max_new_tokens=64, do_sample=False)
        samples.append((p, tok2.decode(gen[0].tolist(), skip_special_tokens=True)))
        print(f"--- sample for {p!r}:\n{samples[-1][1]}", flush=True)

    st_size = (out / "model.safetensors").stat().st_size
    total_wall = time.time() - t_start
    cmd = "nice -n 10 python scripts/train_tiny_model.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_training_md(
        out, args=args, cmd=cmd.strip(), total_steps=step, plan=plan, stopped_early=stopped_early,
        train_files=train_files, heldout_files=heldout_files, n_train_tok=n_train_tok, n_held_tok=n_held_tok,
        train_bytes=train_bytes, held_bytes=held_bytes, sha=sha, n_params=n_params, st_size=st_size,
        train_wall=train_wall, total_wall=total_wall, final_loss=final_loss, ppl=ppl, uni_ppl=uni_ppl,
        eval_tokens=cnt, samples=samples, versions=(platform.python_version(), torch.__version__, transformers.__version__),
    )
    print(f"done in {total_wall / 60:.1f} min; wrote {out}", flush=True)


def write_training_md(out: Path, **k):
    import tokenizers

    a = k["args"]
    py, tv, tfv = k["versions"]
    samples = "\n\n".join(f"Prompt `{p!r}`:\n\n```python\n{s}\n```" for p, s in k["samples"])
    md = f"""# tiny-llama3: llama-aot's embedded default model

A tiny Llama-3-architecture causal LM trained from scratch on CPython 3.11
standard-library sources, so every machine with Python 3.11 has its training
data. Produced by `scripts/train_tiny_model.py` (this file is generated by it).

## Command

```
{k["cmd"]}
```

Exact replay of this run (same data order and learning-rate schedule):

```
nice -n 10 python scripts/train_tiny_model.py --plan {",".join(f"{a}:{b}" for a, b in k["plan"]) or "0:" + str(k["total_steps"])}
```

(The step budget was planned from measured step times on a shared CPU: at
each `step:total` pair the planned total number of steps was set to `total`;
the rest of the cosine decay is stretched/compressed over the new remaining steps.)

Environment: Python {py}, torch {tv} (CPU, {a.threads} threads,
OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY")}), transformers {tfv}, tokenizers {tokenizers.__version__}.

## Data

- Files: the `STDLIB_FILES` tuple in `evaluation/corpus.py`
  ({len(k["train_files"]) + len(k["heldout_files"])} pure-Python modules of CPython 3.11's `Lib/`),
  read from `sysconfig.get_paths()["stdlib"]`.
  sha256 of (name, content) pairs: `{k["sha"]}`
  (a different 3.11.x patch release gives a slightly different corpus).
- Split by file: index % {HELDOUT_EVERY} == {HELDOUT_EVERY - 1} held out.
  - train: {len(k["train_files"])} files, {k["train_bytes"]:,} bytes, {k["n_train_tok"]:,} tokens
  - held-out: {len(k["heldout_files"])} files, {k["held_bytes"]:,} bytes, {k["n_held_tok"]:,} tokens
    ({", ".join(k["heldout_files"])})
- Each file is one document: `<|begin_of_text|>` + tokens + `<|end_of_text|>`;
  training samples are random {SEQ_LEN}-token windows of the concatenated train stream.

## Tokenizer

`tokenizers` byte-level BPE trained on the train files only: vocab {VOCAB_SIZE},
min_frequency 2, Llama 3 pre-tokenizer (the Llama 3 split regex, then
ByteLevel without prefix space), ByteLevel decoder (lossless round trip).
Special tokens: `{BOS_TOKEN}` = id {BOS_ID} (bos), `{EOS_TOKEN}` = id {EOS_ID} (eos).
As in Llama 3, the post-processor prepends `{BOS_TOKEN}` when
`add_special_tokens=True` (the `tokenizers` default).

## Model

`LlamaForCausalLM`: hidden 256, 4 layers, 8 attention heads x head_dim 32,
2 KV heads (GQA), SwiGLU intermediate 768, RMSNorm eps 1e-5, RoPE theta 500000
with llama3 rope scaling (factor 8, low/high freq factor 1/4, original max
positions 256), max_position_embeddings 2048, tied input/output embeddings,
vocab {VOCAB_SIZE}. {k["n_params"]:,} parameters; stored as float32
`model.safetensors` ({k["st_size"]:,} bytes, no `lm_head.weight`).
`config.json` uses the published Llama 3.2 layout (top-level `rope_theta`,
`rope_scaling`, `torch_dtype`).

## Training

AdamW (betas 0.9/0.95, eps 1e-8, weight decay {a.weight_decay} on matrices),
peak lr {a.lr}, {a.warmup_steps} linear warmup steps then cosine decay to
{a.min_lr_ratio} x peak, grad-norm clip 1.0, batch {a.batch_size} x {SEQ_LEN} tokens,
{"bf16 autocast with fp32 master weights" if not a.no_bf16_autocast else "fp32"}, seed {a.seed}.

- steps: {k["total_steps"]}{" (stopped early: time budget)" if k["stopped_early"] else ""}
  ({k["total_steps"] * a.batch_size * SEQ_LEN:,} training tokens,
  {k["total_steps"] * a.batch_size * SEQ_LEN / k["n_train_tok"]:.1f} epochs)
- training-loop wall time: {k["train_wall"] / 60:.1f} min; whole script: {k["total_wall"] / 60:.1f} min
  (shared 2-core CPU box)
- final train loss (mean of last 50 steps): {k["final_loss"]:.4f} nats/token

## Evaluation

Per-token perplexity on all held-out files ({k["eval_tokens"]:,} predicted
tokens; each file split into {SEQ_LEN}-token windows, fp32):

| model | held-out perplexity |
|---|---|
| tiny-llama3 | **{k["ppl"]:.2f}** |
| unigram baseline (add-one smoothed train-token frequencies) | {k["uni_ppl"]:.2f} |

## Sample greedy generations

{samples}
"""
    (out / "TRAINING.md").write_text(md)


if __name__ == "__main__":
    main()
