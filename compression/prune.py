"""``llama-aot prune``: structured pruning of a Llama 3 checkpoint to a parameter target, then recovery.

Two ways to choose what goes (``method``):
- ``l0`` (Sheared-LLaMA): hard-concrete gates (compression/hard_concrete.py) over every KV group (a KV head and its
  query heads), every FFN channel and every layer are learned together with the weights, by distillation from
  the unpruned model plus a Lagrangian that pulls the expected non-embedding size to the target (ramped there
  over the first half of the steps); the kept structure is then read off the gates' keep probabilities.
- ``taylor`` (LLM-Pruner style): one-shot first-order importance |dL/dgate| of the same units, per parameter,
  summed over ``steps`` batches of the language-model loss; no layer is dropped.
Either way the cut model (compression/structure.py: FFN widths in blocks of the quantization group) is then
recovered by distillation from the unpruned model for ``recovery_steps`` and written as a Hugging Face checkpoint
with ``layer_shapes`` (docs/pruned-config.md), which ``compile`` and ``eval`` take like any other.

Long runs save their state every ``save_every`` steps beside the output (``.OUT.prune-partial/``); running the same
command again resumes where it stopped and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from runtime_stubs.errors import LlamaAotError

from .distill import batch_at, distillation_loss, learning_rate, teacher_logits, token_stream
from .hard_concrete import HardConcrete
from .structure import Dims, LayerKeep, cut_weights, minimum_params, pruned_config, select

METHODS = ("l0", "taylor")
REPORT = "pruning.json"  # in the output: what was pruned, how, and the parameter counts


@dataclass(frozen=True)
class PruneOptions:
    target_params: float = 0.65  # fraction of the non-embedding parameters kept
    method: str = "l0"
    steps: int = 200  # l0: steps learning gates and weights; taylor: batches of importance
    recovery_steps: int = 200
    budget_minutes: float | None = None  # both phases' steps are cut to fit (measured step times)
    batch: int = 16
    seq_len: int = 256
    lr: float = 3e-4  # the weights' peak learning rate (both phases)
    mask_lr: float = 0.05  # the gates' and the Lagrange multipliers'
    data: str = "train"
    seed: int = 0
    save_every: int = 25


class SizeController:
    """The Lagrange multiplier of the size constraint, as a PI controller (Stooke et al. 2020, "PID Lagrangian").

    Why not gradient ascent on the multiplier with Adam (the first version): Adam moves it by about its learning
    rate every step whatever the gap's size, so it kept rising while the gates lagged the ramped target and then
    carried the size past it (target 0.65 ended at 0.46 expected). Here the multiplier is
    ``KP * gap + KI * sum(gaps)``: the integral is plain gradient ascent (it grows with the gap, not by a fixed
    step) and the proportional term follows the current gap, so the push stops as the gap closes.

    Scale: the gap is a fraction of the non-embedding parameters and the KL is ~0.1-1 nats; a lag of 0.1 gives a
    proportional push of 2, and a lag of 0.01 held for 100 steps an integral of 1. The integral is clamped to
    +-INTEGRAL_MAX (anti-windup: while the gates cannot keep up with the ramp it would otherwise grow without
    bound and then overshoot); 2 is above the KL's change per unit of size at targets 0.5-0.9 on the tiny model
    (0 -> ~0.3 nats for -35%). At 0.3 (KL ~0.5) it is not: learning ended at 0.39 and the cut enforced the budget;
    a clamp scaled with the KL is the next step."""

    NAME = "pi-1"  # recorded in pruning.json and in the resume key: outputs of another controller are not reused
    KP = 20.0
    KI = 1.0
    INTEGRAL_MAX = 2.0

    def __init__(self, integral: float = 0.0):
        self.integral = float(integral)

    def multiplier(self, gap: float) -> float:
        self.integral = max(-self.INTEGRAL_MAX, min(self.INTEGRAL_MAX, self.integral + self.KI * gap))
        return self.KP * gap + self.integral


class _Gates(torch.nn.Module):
    """Per layer: a gate per KV group and per FFN channel; one gate per layer."""

    def __init__(self, dims: Dims):
        super().__init__()
        self.heads = torch.nn.ModuleList(HardConcrete(d.kv_heads) for d in dims.layers)
        self.ffn = torch.nn.ModuleList(HardConcrete(d.ffn) for d in dims.layers)
        self.layers = HardConcrete(len(dims.layers))

    def sample(self, generator) -> tuple[list, list, torch.Tensor]:
        return ([g(generator) for g in self.heads], [g(generator) for g in self.ffn], self.layers(generator))

    def expected_params(self, dims: Dims) -> torch.Tensor:
        """E[non-embedding parameters] under the gates (each gate kept with its keep probability)."""
        p_layer = self.layers.keep_probability()
        total = torch.tensor(float(dims.hidden))
        for i in range(len(dims.layers)):
            inner = (self.heads[i].keep_probability().sum() * dims.group_params(i)
                     + self.ffn[i].keep_probability().sum() * dims.channel_params + 2 * dims.hidden)
            total = total + p_layer[i] * inner
        return total


class _GateHooks:
    """Multiply each layer's attention output (o_proj's input, per KV group) and FFN activation (down_proj's input,
    per channel) by the current gate values, and both by the layer's gate."""

    def __init__(self, model, dims: Dims):
        self.values = None  # (heads, ffn, layers) set before each forward
        self.handles = []
        for i, layer in enumerate(model.model.layers):
            width = dims.layers[i].q_per_kv * dims.head_dim
            self.handles.append(layer.self_attn.o_proj.register_forward_pre_hook(self._hook(i, 0, width)))
            self.handles.append(layer.mlp.down_proj.register_forward_pre_hook(self._hook(i, 1, 1)))

    def _hook(self, i: int, kind: int, width: int):
        def hook(_module, args):
            heads, ffn, layers = self.values
            gate = (heads[i].repeat_interleave(width) if kind == 0 else ffn[i]) * layers[i]
            return (args[0] * gate,)

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def prune(model_dir: str | Path, out: str | Path, options: PruneOptions, progress: bool = True) -> dict:
    """Prune ``model_dir`` to ``options.target_params`` and write the recovered checkpoint to ``out``."""
    from compiler.package import refuse_foreign_output
    from evaluation.reference import model_from_config, reference_model

    model_dir, out = Path(model_dir), Path(out)
    raw = _check(model_dir, options)
    refuse_foreign_output(out, REPORT, "a llama-aot prune output")  # before any training
    dims = Dims.from_config(raw)
    full = dims.non_embedding_params()
    budget = int(options.target_params * full)
    if budget < minimum_params(dims):
        raise LlamaAotError(f"--target-params {options.target_params} asks for {budget:,} non-embedding parameters, "
                            f"below the smallest model of this shape ({minimum_params(dims):,}); raise it")
    stream = token_stream(model_dir, options.data)
    teacher = reference_model(model_dir)
    for p in teacher.parameters():
        p.requires_grad_(False)
    partial = out.resolve().with_name(f".{out.resolve().name}.prune-partial")
    run = _Run(partial, _run_key(model_dir, options), options, progress)
    state = run.load()
    if state.get("phase", "select") == "select":
        keep, state = _choose(teacher, dims, stream, budget, options, run, state)
    keep = [LayerKeep(k["source"], tuple(k["kv_groups"]), tuple(k["ffn"])) for k in state["keep"]]
    config = pruned_config(raw, dims, keep)
    student = model_from_config(config, state["cut"])
    final_loss = _recover(student, teacher, stream, options, run, state)
    kept = dims.non_embedding_params(keep)
    report = {
        "source": model_dir.name, "method": options.method, "options": asdict(options),
        **({"size_control": SizeController.NAME} if options.method == "l0" else {}),
        "non_embedding_params": {"before": full, "after": kept, "kept": kept / full, "target": options.target_params},
        "embedding_params": dims.embedding_params(),
        "total_params": {"before": full + dims.embedding_params(), "after": kept + dims.embedding_params()},
        "layers_kept": [k.source for k in keep],
        "layer_shapes": config["layer_shapes"],
        "steps": {"select": state["select_steps"], "recovery": state["recovery_steps"]},
        "recovery_distillation_loss": final_loss,
        # l0: [step, ramped target, expected size] every 10 gate steps (how the size controller tracked the target)
        **({"size_trace": state["size_trace"]} if "size_trace" in state else {}),
        "seconds": round(run.elapsed(), 1),  # resumed runs count every session
    }
    write_checkpoint(out, student, config, model_dir, REPORT, report, "a llama-aot prune output")
    shutil.rmtree(partial, ignore_errors=True)
    return report


def write_checkpoint(out: Path, model, config: dict, source_dir: Path, report_name: str, report: dict,
                     what: str) -> None:
    """``model``'s weights as a Hugging Face checkpoint in ``out`` (atomically; an earlier one with ``report_name``
    is replaced): stored in the source checkpoint's type (training runs in float32), the tied lm_head left out,
    config.json, the source's tokenizer files, and the report."""
    from safetensors.torch import save_file

    from compiler.package import atomic_output_dir, copy_tokenizer

    dtype = _source_dtype(source_dir)
    weights = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()
               if not (config.get("tie_word_embeddings") and k == "lm_head.weight")}
    with atomic_output_dir(out, marker=report_name, what=what) as tmp:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        copy_tokenizer(source_dir, tmp)
        (tmp / report_name).write_text(json.dumps(report, indent=1) + "\n")


def distill(student, teacher, stream: np.ndarray, options: PruneOptions, steps: int, progress: bool = True) -> float:
    """Recovery's distillation loop on any student, without a saved state (baselines such as a pruned shape
    trained from scratch at the same compute, bench/prune_curve.py); returns the last loss."""
    run = _Run(Path("."), "", replace(options, save_every=steps + 1), progress)
    return _recover(student, teacher, stream, run.options, run, {"recovery_steps": steps})


def _source_dtype(model_dir: Path) -> torch.dtype:
    """The floating-point type the checkpoint's first weight is stored in (float32 if it is not a float)."""
    from safetensors import safe_open

    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                return {"BF16": torch.bfloat16, "F16": torch.float16}.get(st.get_slice(k).get_dtype(), torch.float32)
    return torch.float32


def _check(model_dir: Path, options: PruneOptions) -> dict:
    if not (model_dir / "config.json").is_file():
        raise LlamaAotError(f"{model_dir} has no config.json; pass a Hugging Face Llama checkpoint directory")
    if not (model_dir / "tokenizer.json").is_file():
        raise LlamaAotError(f"{model_dir} has no tokenizer.json; pruning trains on text and needs the tokenizer")
    if not 0 < options.target_params < 1:
        raise LlamaAotError(f"--target-params must be a fraction in (0, 1) of the non-embedding parameters, got "
                            f"{options.target_params}")
    if options.method not in METHODS:
        raise LlamaAotError(f"--method {options.method!r} is unknown; use one of {', '.join(METHODS)}")
    if min(options.steps, options.batch, options.save_every) < 1 or options.recovery_steps < 0 or options.seq_len < 2:
        raise LlamaAotError("--steps, --batch and --save-every must be at least 1, --recovery-steps at least 0, "
                            "--seq-len at least 2")
    if options.budget_minutes is not None and options.budget_minutes <= 0:
        raise LlamaAotError(f"--budget-minutes must be positive, got {options.budget_minutes}")
    try:
        return json.loads((model_dir / "config.json").read_text())
    except ValueError as e:
        raise LlamaAotError(f"{model_dir}/config.json is not valid JSON ({e}); fix or replace it") from None


def _run_key(model_dir: Path, options: PruneOptions) -> str:
    """What a saved state must match to be resumed: the options but the time budget, the config, the weights' sizes."""
    h = hashlib.sha256(json.dumps({**asdict(options), "budget_minutes": None, "size_control": SizeController.NAME},
                                  sort_keys=True).encode())
    h.update((model_dir / "config.json").read_bytes())
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()


class _Run:
    """The resumable state on disk, the time budget and the progress bars of one prune."""

    def __init__(self, partial: Path, key: str, options: PruneOptions, progress: bool):
        self.partial, self.key, self.options, self.progress = partial, key, options, progress
        self.t0 = time.perf_counter()
        self.elapsed_before = 0.0

    def load(self) -> dict:
        path = self.partial / "state.pt"
        if path.is_file():
            try:
                state = torch.load(path, weights_only=False)
            except Exception:  # a state cut short by a kill: start over
                state = {}
            if state.get("key") == self.key:
                self.elapsed_before = state.get("elapsed", 0.0)
                print(f"resuming {state['phase']} at step {state.get('step', 0)} from {self.partial}", flush=True,
                      file=sys.stderr)
                return state
        shutil.rmtree(self.partial, ignore_errors=True)
        return {"key": self.key, "phase": "select", "step": 0}

    def save(self, state: dict) -> None:
        self.partial.mkdir(parents=True, exist_ok=True)
        state["elapsed"] = self.elapsed()
        tmp = self.partial / "state.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.partial / "state.pt")  # atomic: a kill leaves the previous state or this one

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def fit_steps(self, done: int, planned: int, later: int, step_seconds: float) -> tuple[int, int]:
        """(this phase's, the later phase's) step totals cut to the time budget, in proportion."""
        if self.options.budget_minutes is None:
            return planned, later
        left = self.options.budget_minutes * 60 - self.elapsed() - 10  # 10 s for writing the output
        want = (planned - done + later) * step_seconds
        if want <= left:
            return planned, later
        f = max(0.0, left / want)
        return done + max(1, int((planned - done) * f)), int(later * f)


def _generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.default_rng([seed, step, 7]).integers(2**62)))


def _choose(teacher, dims: Dims, stream, budget: int, options: PruneOptions, run: _Run, state: dict):
    """Learn (l0) or measure (taylor) which units to keep; return the structure and the cut weights in ``state``."""
    fn = _learn_gates if options.method == "l0" else _taylor_importance
    keep, cut, steps = fn(teacher, dims, stream, budget, options, run, state)
    state = {"key": run.key, "phase": "recovery", "step": 0, "select_steps": steps,
             "keep": [{"source": k.source, "kv_groups": list(k.kv_groups), "ffn": list(k.ffn)} for k in keep],
             "cut": cut, "recovery_steps": state.get("recovery_steps", options.recovery_steps),
             **({"size_trace": state["size_trace"]} if "size_trace" in state else {})}
    run.save(state)
    return keep, state


def _learn_gates(teacher, dims, stream, budget, options, run, state):
    from tqdm import tqdm

    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    gates = _Gates(dims)
    opt_w = torch.optim.AdamW(student.parameters(), lr=options.lr, betas=(0.9, 0.95), weight_decay=0.0)
    opt_g = torch.optim.Adam(gates.parameters(), lr=options.mask_lr)
    total, later = options.steps, options.recovery_steps
    if state.get("step"):
        student.load_state_dict(state["student"])
        gates.load_state_dict(state["gates"])
        opt_w.load_state_dict(state["opt_w"])
        opt_g.load_state_dict(state["opt_g"])
        total, later = state["select_steps"], state["recovery_steps"]
    control = SizeController(state.get("size_integral", 0.0))
    trace = list(state.get("size_trace", []))
    hooks = _GateHooks(student, dims)
    full = float(dims.non_embedding_params())
    target = budget / full
    start = state.get("step", 0)
    t_steps, bar = [], tqdm(total=total, initial=start, desc="prune: learn gates", unit="step", disable=not run.progress)
    for step in range(start, total):
        t = time.perf_counter()
        x = batch_at(stream, step, options.seed, options.batch, options.seq_len)[:, :-1]
        for g in opt_w.param_groups:
            g["lr"] = learning_rate(step, total, options.lr)
        ramp = 1 - (1 - target) * min(1.0, (step + 1) / max(1, total // 2))  # the target, reached at half time
        gates.train()
        hooks.values = gates.sample(_generator(options.seed, step))
        kl = distillation_loss(student(input_ids=x, use_cache=False).logits, teacher_logits(teacher, x))
        gap = gates.expected_params(dims) / full - ramp
        loss = kl + control.multiplier(gap.item()) * gap
        opt_w.zero_grad(set_to_none=True)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt_w.step()
        opt_g.step()
        bar.update(1)
        bar.set_postfix(kl=f"{kl.item():.3f}", size=f"{gap.item() + ramp:.3f}", target=f"{ramp:.3f}")
        if step % 10 == 0 or step + 1 == total:
            trace.append([step, round(ramp, 4), round(gap.item() + ramp, 4)])
        t_steps.append(time.perf_counter() - t)
        if len(t_steps) == 3:
            total, later = run.fit_steps(step + 1, total, later, float(np.median(t_steps)))
            bar.total = total
        if (step + 1) % options.save_every == 0 and step + 1 < total:
            run.save({**state, "phase": "select", "step": step + 1, "student": student.state_dict(),
                      "gates": gates.state_dict(), "opt_w": opt_w.state_dict(), "opt_g": opt_g.state_dict(),
                      "select_steps": total, "recovery_steps": later, "size_integral": control.integral,
                      "size_trace": trace})
    bar.close()
    hooks.remove()
    gates.eval()
    with torch.no_grad():
        heads, ffn, layers = gates.sample(None)  # the deterministic gate values, folded into the weights
        p_layer = gates.layers.keep_probability()
        kept_layers = [i for i in range(len(dims.layers)) if p_layer[i] >= 0.5] or [int(p_layer.argmax())]
        keep = select(dims, kept_layers, [g.keep_probability().numpy() for g in gates.heads],
                      [g.keep_probability().numpy() for g in gates.ffn], budget)
        cut = cut_weights(student.state_dict(), dims, keep, heads, ffn, layers)
    state["recovery_steps"] = later
    state["size_trace"] = trace
    return keep, cut, total


def _taylor_importance(teacher, dims, stream, budget, options, run, state):
    """|dL/dgate| of the language-model loss at gates of 1, summed over ``steps`` batches, per parameter."""
    from tqdm import tqdm

    model = copy.deepcopy(teacher)
    hooks = _GateHooks(model, dims)
    heads = [torch.zeros(d.kv_heads, dtype=torch.float64) for d in dims.layers]
    ffn = [torch.zeros(d.ffn, dtype=torch.float64) for d in dims.layers]
    start = state.get("step", 0)
    if start:
        heads, ffn = state["heads"], state["ffn"]
    for step in tqdm(range(start, options.steps), initial=start, total=options.steps, desc="prune: importance",
                     unit="batch", disable=not run.progress):
        x = batch_at(stream, step, options.seed, options.batch, options.seq_len)
        gates = ([torch.ones(d.kv_heads, requires_grad=True) for d in dims.layers],
                 [torch.ones(d.ffn, requires_grad=True) for d in dims.layers], torch.ones(len(dims.layers)))
        hooks.values = gates
        logits = model(input_ids=x[:, :-1], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1))
        grads = torch.autograd.grad(loss, gates[0] + gates[1])
        for i in range(len(dims.layers)):
            heads[i] += grads[i].abs().double()
            ffn[i] += grads[len(dims.layers) + i].abs().double()
        if (step + 1) % options.save_every == 0 and step + 1 < options.steps:
            run.save({**state, "phase": "select", "step": step + 1, "heads": heads, "ffn": ffn})
    hooks.remove()
    layers = list(range(len(dims.layers)))
    keep = select(dims, layers, [(h / dims.group_params(i)).numpy() for i, h in enumerate(heads)],
                  [(f / dims.channel_params).numpy() for f in ffn], budget)
    return keep, cut_weights(teacher.state_dict(), dims, keep), options.steps


def _recover(student, teacher, stream, options: PruneOptions, run: _Run, state: dict) -> float | None:
    """Distill the cut model from the unpruned one; its weights are left in ``student``."""
    from tqdm import tqdm

    total = state["recovery_steps"]
    opt = torch.optim.AdamW(student.parameters(), lr=options.lr, betas=(0.9, 0.95), weight_decay=0.0)
    start = state.get("step", 0)
    if start:
        student.load_state_dict(state["student"])
        opt.load_state_dict(state["opt"])
    student.train()
    loss, t_steps = None, []
    bar = tqdm(total=total, initial=start, desc="prune: recover", unit="step", disable=not run.progress)
    for step in range(start, total):
        t = time.perf_counter()
        x = batch_at(stream, 1_000_000 + step, options.seed, options.batch, options.seq_len)[:, :-1]
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, total, options.lr)
        kl = distillation_loss(student(input_ids=x, use_cache=False).logits, teacher_logits(teacher, x))
        opt.zero_grad(set_to_none=True)
        kl.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        loss = kl.item()
        bar.update(1)
        bar.set_postfix(kl=f"{loss:.3f}")
        t_steps.append(time.perf_counter() - t)
        if len(t_steps) == 3:
            total = run.fit_steps(step + 1, total, 0, float(np.median(t_steps)))[0]
            bar.total = total
        if (step + 1) % options.save_every == 0 and step + 1 < total:
            run.save({**state, "step": step + 1, "student": student.state_dict(), "opt": opt.state_dict(),
                      "recovery_steps": total})
    bar.close()
    state["recovery_steps"] = total
    student.eval()
    return loss
