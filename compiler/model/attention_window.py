"""``compile --sliding-window W --attention-sinks S``: the build's window from the options or the checkpoint.

The semantics and how they map onto TVM's paged KV cache: runtime_stubs/attention_window.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from runtime_stubs.attention_window import AttentionWindow
from runtime_stubs.errors import LlamaAotError

DEFAULT_SINKS = 4  # StreamingLLM's (arXiv 2309.17453): 4 initial tokens keep a pretrained model stable


def _from_checkpoint(model_dir: Path) -> tuple[int | None, str | None]:
    """(window, why) from a checkpoint's config.json: ``sliding_window`` (unless ``use_sliding_window``
    is false) when every layer is windowed; None and a reason when only some layers are."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None, None  # load_spec reports a bad config.json
    window = cfg.get("sliding_window")
    if not isinstance(window, int) or isinstance(window, bool) or cfg.get("use_sliding_window") is False:
        return None, None
    kinds = set(cfg.get("layer_types") or ["sliding_attention"])
    if kinds != {"sliding_attention"}:
        return None, (f"its config.json windows only some layers ({', '.join(sorted(kinds))}); per-layer windows "
                      "are not supported yet: compile with --sliding-window W to window every layer, or without to keep all full")
    return window, None


def resolve(model_dir: Path, window: int | None, sinks: int | None, context_window: int, prefill_chunk: int,
            head_dim: int, device_api: str | None) -> AttentionWindow | None:
    """The build's window from the options (they win) or the checkpoint's config; a one-line error for
    what cannot be built."""
    from_config, why = _from_checkpoint(model_dir)
    if window is None and why:
        raise LlamaAotError(f"{Path(model_dir).name}: {why}")
    if window is None and from_config is not None:
        window, sinks = from_config, 0 if sinks is None else sinks
    if window is None:
        if sinks:
            raise LlamaAotError("--attention-sinks needs --sliding-window W (the sinks are part of the window)")
        return None
    sinks = DEFAULT_SINKS if sinks is None else sinks
    if window < 1 or sinks < 0:
        raise LlamaAotError(f"--sliding-window must be positive and --attention-sinks >= 0 (got {window}, {sinks})")
    if window <= sinks:
        raise LlamaAotError(f"--sliding-window ({window}) must be larger than --attention-sinks ({sinks}): "
                            "the window holds the sinks and the recent tokens")
    if window > context_window:
        raise LlamaAotError(f"--sliding-window {window} is larger than the context window {context_window}; "
                            f"use a window <= {context_window} or a larger --context-window")
    if device_api is not None:
        raise LlamaAotError(f"--sliding-window is built for CPU targets only so far, not {device_api}; "
                            "compile with --device cpu (or --target host), or without --sliding-window")
    if head_dim % 16:
        raise LlamaAotError(f"--sliding-window needs a head dim that is a multiple of 16 (this model's is {head_dim})")
    return AttentionWindow(window, sinks)
