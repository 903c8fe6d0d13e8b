"""Quality cost of a sliding window on the embedded tiny model: held-out perplexity with and without it.

``python -m bench.window_quality [--context 1024] [--windows 64:4,128:4,128:0,256:4]`` splits each held-out
file of the tiny model's training data (scripts/train_tiny_model.py: CPython 3.11 stdlib sources, every
10th file) into ``--context``-token windows and scores every predicted token with transformers, once with
full causal attention and once per W:S with the sliding-window mask our kernels implement (first S tokens
plus the most recent W - S; tests/e2e/test_sliding_window.py checks our packages against this mask).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def window_mask(n: int, window: int | None, sinks: int):
    import numpy as np

    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    visible = j <= i
    if window:
        visible &= (j < sinks) | (i - j < window - sinks)
    return np.where(visible, 0.0, float("-inf")).astype("float32")


def main(argv=None) -> int:
    import torch
    from tokenizers import Tokenizer

    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT / "tests"))
    import train_tiny_model as ttm
    from reference import reference_model

    p = argparse.ArgumentParser(prog="python -m bench.window_quality")
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--windows", default="64:4,128:4,128:0,256:4")
    p.add_argument("--max-windows", type=int, default=40, help="context windows scored (the first of each file)")
    args = p.parse_args(argv)
    settings = [(None, 0)] + [tuple(int(x) for x in w.split(":")) for w in args.windows.split(",")]
    model_dir = ROOT / "models" / "tiny-llama3"
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    _, heldout = ttm.split_files()
    docs = ttm.encode_docs(tok, ttm.read_sources(heldout))
    samples = [w for d in docs for w in ttm.doc_windows(d, args.context) if len(w) == args.context + 1]
    samples = samples[: args.max_windows]
    model = reference_model(model_dir)
    nll = {s: 0.0 for s in settings}
    tokens = 0
    torch.set_num_threads(2)
    for w in samples:
        ids = torch.tensor([w[:-1]])
        target = torch.tensor(w[1:])
        tokens += len(w) - 1
        for s in settings:
            mask = torch.tensor(window_mask(len(w) - 1, *s))[None, None]
            with torch.no_grad():
                logits = model(ids, attention_mask=mask, use_cache=False).logits[0]
            nll[s] += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
    dense = math.exp(nll[(None, 0)] / tokens)
    rows = [{"window": s[0], "sinks": s[1], "perplexity": math.exp(nll[s] / tokens),
             "vs_dense": math.exp(nll[s] / tokens) / dense - 1} for s in settings]
    print(json.dumps({"context": args.context, "windows_scored": len(samples), "tokens": tokens, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
