"""Run what bench/gpu/prepare.py prepared, on the GPU machine: model checks + 1B decode vs roofline.

Needs only Python 3 + numpy (torch, when present, measures the GPU's memory read bandwidth for the
roofline) and a Vulkan loader + driver.  Writes results.json and prints one line per case.

    python3 bench/gpu/check.py .gpu --results $OUT/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def driver(root: Path, package: Path, prompt, max_tokens: int, force=(), logits: Path | None = None, verbose=False,
           timeout=300, env: dict | None = None) -> dict:  # fmt: skip
    args = [str(root / "llama_aot_run"), str(package), "--device", "vulkan", "--prompt-ids", ",".join(map(str, prompt)),
            "--max-tokens", str(max_tokens), "--no-stop-on-eos"]  # fmt: skip
    if force:
        args += ["--force-ids", ",".join(map(str, force))]
    if logits is not None:
        args += ["--logits-out", str(logits)]
    if verbose:
        args.append("--verbose")
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if p.returncode != 0:
        raise RuntimeError(f"llama_aot_run exit {p.returncode}: {p.stderr.strip()[-1500:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def model_case(root: Path, case: dict, tmp: Path) -> dict:
    pkg = root / case["package"]
    if case.get("params_from") and not (pkg / "params").exists():
        shutil.copytree(root / case["params_from"] / "params", pkg / "params")
    ref = np.load(root / "ref" / f"{case.get('ref_name', case['name'])}.npy")
    force = case["force"]
    out = tmp / f"{case['name']}.bin"
    res = driver(root, pkg, case["prompt"], len(force), force=force, logits=out, timeout=90)
    got = np.fromfile(out, dtype=np.float32).reshape(len(force), -1)
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    ok = rel <= case["tol"]
    greedy = [int(t) for t in got.argmax(-1)]
    if case["greedy_must_match"]:
        ok = ok and greedy == force
    return {"name": case["name"], "reference": case["reference"], "rel_err": rel, "tol": case["tol"], "ok": bool(ok),
            "greedy_matches": greedy == force, "decode_tok_s": res["decode_tokens_per_s"]}  # fmt: skip


def random_weights(pkg: Path, seed: int = 0) -> int:
    """Write the shard files the manifest lists with random weights of the right dtypes: packed
    nibbles uniform, scales and float weights small (decode speed does not depend on the values,
    only NaN/inf would spoil the logits).  Returns the bytes written."""
    rng = np.random.default_rng(seed)
    manifest = json.loads((pkg / "params" / "manifest.json").read_text())
    entries = manifest["params"] if isinstance(manifest, dict) else manifest
    files: dict[str, bytearray] = {}
    for e in entries:
        buf = files.setdefault(e["file"], bytearray())
        n = int(np.prod(e["shape"])) if e["shape"] else 1
        dt = np.dtype(e["dtype"])
        if dt.kind in "ui":
            a = rng.integers(0, np.iinfo(dt).max, size=n, dtype=dt, endpoint=True)
        elif "norm" in e["name"]:
            a = np.ones(n, dt)
        else:
            a = (rng.standard_normal(n, dtype=np.float32) * (0.002 if "scale" in e["name"] else 0.02)).astype(dt)
        end = e["offset"] + e["nbytes"]
        if len(buf) < end:
            buf.extend(b"\0" * (end - len(buf)))
        buf[e["offset"]:end] = a.tobytes()
    for name, buf in files.items():
        (pkg / "params" / name).write_bytes(bytes(buf))
    return sum(len(b) for b in files.values())


def read_bandwidth_gbs() -> float | None:
    """Device memory read bandwidth through torch: the best of 10 sums over 4 GiB."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    x = torch.ones(2**30, dtype=torch.float32, device="cuda")
    for _ in range(3):
        x.sum()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        x.sum()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    nbytes = x.numel() * 4
    del x
    torch.cuda.empty_cache()
    return nbytes / best / 1e9


def device_facts(root: Path, case: dict, profile: dict, results: dict) -> None:
    """The device's name and limits, and where the profile the packages were compiled for differs."""
    info = driver(root, root / case["package"], case["prompt"][:4], 1, verbose=True, timeout=120).get("device_info", {})
    results["device_info"] = info
    results["profile_differences"] = {
        k: {"profile": v, "device": info.get(k)}
        for k, v in profile.items()
        if k in info and k not in ("kind", "device_name", "max_num_threads", "max_threads_per_block") and info.get(k) != v
    }
    print(f"device: {info.get('device_name')}; profile differences: {results['profile_differences']}", flush=True)


def bench(root: Path, spec: dict, results: dict) -> None:
    pkg = root / spec["package"]
    t0 = time.perf_counter()
    written = random_weights(pkg)
    print(f"1b: wrote {written / 1e9:.2f} GB of random weights in {time.perf_counter() - t0:.1f} s", flush=True)
    cfg = json.loads((pkg / "llama-aot.json").read_text())
    vocab = cfg["model"]["vocab_size"]
    prompt = [(7919 * i + 17) % (vocab - 10) + 5 for i in range(spec["prompt_tokens"])]
    runs = [driver(root, pkg, prompt, spec["decode_tokens"] + 1, verbose=(i == 0), timeout=180) for i in range(3)]
    info = runs[0].get("device_info", {})
    # the same with storage in the host-mapped ReBAR window (what the runtime did before it kept
    # discrete GPUs' storage unmapped): shows what uncached host reads cost
    mapped = driver(root, pkg, prompt, spec["decode_tokens"] + 1, timeout=180, env={"LLAMA_AOT_VULKAN_MAPPED": "1"})
    # where a step's time goes: GPU busy (timestamps per batch) vs host time recording dispatches
    timed = driver(root, pkg, prompt, spec["decode_tokens"] + 1, verbose=True, timeout=180,
                   env={"LLAMA_AOT_VULKAN_TIMING": "1"})  # fmt: skip
    tinfo = timed.get("device_info", {})
    per_token = cfg["weights"]["bytes_read_per_decoded_token"]
    bw = read_bandwidth_gbs()
    decode = max(r["decode_tokens_per_s"] for r in runs)
    prefill = max(r["prefill_tokens_per_s"] for r in runs)
    roofline = bw * 1e9 / per_token if bw else None
    results["bench_1b_q4f16"] = {
        "device": info.get("device_name"), "prefill_tok_s": prefill, "decode_tok_s": decode,
        "decode_runs": [r["decode_tokens_per_s"] for r in runs], "bytes_per_token": per_token,
        "read_bandwidth_gbs": bw, "roofline_tok_s": roofline, "fraction_of_roofline": decode / roofline if roofline else None,
        "decode_tok_s_storage_mapped": mapped["decode_tokens_per_s"],
        "timed_run": {"prefill_s": timed["prefill_seconds"], "decode_s": timed["decode_seconds"],
                      "decode_steps": timed["decode_steps"],
                      **{k: tinfo.get(k) for k in ("gpu_busy_us", "record_us", "fence_wait_us", "dispatches", "syncs")}},
        "runtime_counters_first_run": {k: info.get(k) for k in ("dispatches", "submits", "syncs", "fence_wait_us",
                                       "uploads_recorded", "uploads_synced", "downloads", "allocations", "allocations_reused")},
    }  # fmt: skip
    print(f"1b q4f16 on {info.get('device_name')}: prefill {prefill:.1f} tok/s, decode {decode:.1f} tok/s"
          + (f" = {decode / roofline:.1%} of roofline ({bw:.0f} GB/s, {per_token / 1e6:.0f} MB/token)" if roofline else ""),
          flush=True)  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--results", type=Path, default=Path("results.json"))
    ap.add_argument("--skip-bench", action="store_true")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    spec = json.loads((root / "cases.json").read_text())
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    results: dict = {"profile": spec["profile"], "cases": []}

    def save():
        args.results.write_text(json.dumps(results, indent=1))

    profile = json.loads((root / "profile.json").read_text())
    try:
        device_facts(root, spec["cases"][0], profile, results)
    except Exception as e:
        results["device_error"] = str(e)[-1500:]
        print("device query failed:", results["device_error"], flush=True)
    for case in spec["cases"]:
        try:
            r = model_case(root, case, tmp)
        except Exception as e:  # keep going: one broken case must not hide the others
            r = {"name": case["name"], "ok": False, "error": str(e)[-800:]}
        results["cases"].append(r)
        print(json.dumps(r), flush=True)
        save()
    if spec.get("bench") and not args.skip_bench:
        try:
            bench(root, spec["bench"], results)
        except Exception as e:
            results["bench_error"] = str(e)[-1500:]
            print("bench failed:", results["bench_error"], flush=True)
        save()
    ok = all(c.get("ok") for c in results["cases"])
    print(f"{sum(c.get('ok', False) for c in results['cases'])}/{len(results['cases'])} model cases ok", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
