"""Prepare the Vulkan check for a lent GPU machine (run here; `check.py` runs there).

The GPU machine has no TVM compiler and may carry at most 64 MiB, so everything is compiled here
for the GPU's Vulkan profile (targets/vulkan_profiles), the references are computed here, and the
device side only runs our native driver (`llama_aot_run --device vulkan`, the on-device runtime
with the Vulkan device API built in) and compares with numpy:

* model cases -- the embedded model and a heterogeneous-layer random model in q0f32 (reference:
  transformers fp32, greedy tokens must match), q0f16 and q4f16 (reference: the host CPU build,
  teacher-forced on its own greedy tokens), the tolerances of tests/e2e/test_vulkan_model.py;
* a diagnostic variant compiled without subgroup operations (thread_warp_size 1);
* the 1B-shape q4f16 library for decode tokens/s.  Its 0.7 GB of weights cannot travel: only the
  manifest does, and check.py writes random weights of the listed shapes there.

    python -m bench.gpu.prepare --out .gpu [--profile nvidia-hopper]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PROMPT = [0] + [(37 * i + 5) % 4000 + 3 for i in range(40)]  # crosses prefill chunks (16) and KV pages
STEPS = 8
SMALL = dict(prefill_chunk=16, context_window=128)


def _hetero_prompt() -> list[int]:
    return [1] + [t % 500 + 4 for t in PROMPT[1:]]


def _compile(model_dir: Path, out: Path, quant: str, profile, **kw) -> Path:
    from compiler.compile import CompileOptions, compile_model

    opts = {**SMALL, **kw}
    return compile_model(model_dir, out, CompileOptions(target="vulkan", vulkan_profile=profile, quant=quant, **opts))


def _transformers_greedy(model_dir: Path, prompt: list[int]) -> tuple[list[int], np.ndarray]:
    sys.path.insert(0, str(ROOT / "tests"))
    from reference import reference_logits, reference_model

    model = reference_model(model_dir)
    seq = list(prompt)
    for _ in range(STEPS):
        seq.append(int(reference_logits(model, seq)[-1].argmax()))
    tokens = seq[len(prompt):]
    return tokens, reference_logits(model, prompt + tokens[:-1])[len(prompt) - 1:]


def _host_greedy(model_dir: Path, quant: str, prompt: list[int], work: Path) -> tuple[list[int], np.ndarray]:
    from compiler.compile import CompileOptions, compile_model
    from runtime_stubs.engine import Engine

    pkg = compile_model(model_dir, work / f"host-{model_dir.name}-{quant}", CompileOptions(quant=quant, **SMALL))
    gen = Engine(pkg).generate(prompt, max_tokens=STEPS, keep_logits=True, stop_on_eos=False)
    return list(gen.token_ids), np.stack(gen.logits).astype(np.float32)


def _portable_profile(profile: str, work: Path) -> Path:
    from compiler.build_target import load_vulkan_profile

    t = load_vulkan_profile(profile)
    t["thread_warp_size"] = 1  # TVM then reduces through shared memory, no subgroup operations
    path = work / "no-subgroups.json"
    path.write_text(json.dumps(t))
    return path


def _hetero_checkpoint(work: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from model_configs import CHECKPOINTS

    from compiler.frontend.synthetic import write_random_checkpoint

    config, opts = CHECKPOINTS["heterogeneous"]
    return write_random_checkpoint(work / "heterogeneous", config, seed=zlib.crc32(b"heterogeneous") % 1000, **opts)


def _drop_params(pkg: Path) -> None:
    """Keep the manifest (names, dtypes, shapes, offsets), drop the shard files."""
    for f in (pkg / "params").glob("*.bin"):
        f.unlink()


def prepare(out: Path, profile: str, big_model: Path | None) -> None:
    from runtime_stubs import native_build

    out = out.resolve()
    work = out.parent / f"{out.name}-work"
    shutil.rmtree(out, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    (out / "pkg").mkdir(parents=True)
    (out / "ref").mkdir()

    art = native_build.build_native(vulkan=True)  # raises without libvulkan-dev
    shutil.copy2(art.run, out / "llama_aot_run")

    models = {"tiny": (ROOT / "models" / "tiny-llama3", PROMPT), "heterogeneous": (_hetero_checkpoint(work), _hetero_prompt())}
    cases = []
    for name, (model_dir, prompt) in models.items():
        for quant in ("q0f32", "q0f16", "q4f16"):
            key = f"{name}-{quant}"
            _compile(model_dir, out / "pkg" / key, quant, profile)
            if quant == "q0f32":
                tokens, ref = _transformers_greedy(model_dir, prompt)
                case = {"reference": "transformers fp32", "tol": 1e-3, "greedy_must_match": True}
            else:
                tokens, ref = _host_greedy(model_dir, quant, prompt, work)
                case = {"reference": f"host CPU build ({quant})", "tol": 0.02, "greedy_must_match": False}
            np.save(out / "ref" / f"{key}.npy", ref.astype(np.float32))
            cases.append({"name": key, "package": f"pkg/{key}", "prompt": prompt, "force": tokens, **case})
    # the same q4f16 model without subgroup operations: tells a subgroup problem from any other
    portable = _portable_profile(profile, work)
    _compile(models["tiny"][0], out / "pkg" / "tiny-q4f16-nosubgroups", "q4f16", str(portable))
    shutil.rmtree(out / "pkg" / "tiny-q4f16-nosubgroups" / "params")
    base = next(c for c in cases if c["name"] == "tiny-q4f16")
    cases.append({**base, "name": "tiny-q4f16-nosubgroups", "package": "pkg/tiny-q4f16-nosubgroups", "params_from": "pkg/tiny-q4f16",
                  "ref_name": "tiny-q4f16"})  # fmt: skip

    bench = None
    if big_model is not None:
        _compile(big_model, out / "pkg" / "1b-q4f16", "q4f16", profile, prefill_chunk=128, context_window=1024)
        _drop_params(out / "pkg" / "1b-q4f16")
        bench = {"package": "pkg/1b-q4f16", "prompt_tokens": 128, "decode_tokens": 64}
    from compiler.build_target import load_vulkan_profile

    (out / "profile.json").write_text(json.dumps(load_vulkan_profile(profile), indent=1))
    (out / "cases.json").write_text(json.dumps({"profile": profile, "cases": cases, "bench": bench}, indent=1))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu")
    ap.add_argument("--profile", default="nvidia-hopper", help="Vulkan profile: a JSON file or a targets/vulkan_profiles name")
    ap.add_argument("--big-model", type=Path, default=None, help="the 1B-shape checkpoint (bench.e2e.ensure_1b_model)")
    args = ap.parse_args(argv)
    prepare(args.out, args.profile, args.big_model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
