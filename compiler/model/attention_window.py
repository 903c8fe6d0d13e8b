"""``compile --sliding-window W --attention-sinks S``: the build's window from the options or the checkpoint.

The semantics and how they map onto TVM's paged KV cache: runtime_stubs/attention_window.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from runtime_stubs.attention_window import AttentionWindow
from runtime_stubs.errors import LlamaAotError

DEFAULT_SINKS = 4  # StreamingLLM's (arXiv 2309.17453): 4 initial tokens keep a pretrained model stable


def _from_checkpoint(model_dir: Path) -> tuple[int | None, tuple[int, ...] | None]:
    """(window, windowed layers) from a checkpoint's config.json: ``sliding_window`` (unless
    ``use_sliding_window`` is false), on the layers its ``layer_types`` marks ``sliding_attention``
    (None: every layer; ``layer_types`` absent means every layer)."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None, None  # load_spec reports a bad config.json
    return cfg.get("sliding_window") if cfg.get("use_sliding_window") is not False else None, _layer_types(cfg)


def _layer_types(cfg: dict) -> tuple[int, ...] | None:
    """The windowed layer ids of ``layer_types``, or None when it is absent or windows every layer."""
    kinds = cfg.get("layer_types")
    if kinds is None:
        return None
    n = cfg.get("num_hidden_layers")
    if not isinstance(kinds, list) or len(kinds) != n or not set(kinds) <= {"sliding_attention", "full_attention"}:
        raise LlamaAotError(f"config.json layer_types must list num_hidden_layers ({n}) entries, each "
                            "\"sliding_attention\" or \"full_attention\"; fix the checkpoint's config")
    windowed = tuple(i for i, k in enumerate(kinds) if k == "sliding_attention")
    return None if len(windowed) == n else windowed


def resolve(model_dir: Path, window: int | None, sinks: int | None, context_window: int, prefill_chunk: int,
            head_dim: int, device_api: str | None) -> AttentionWindow | None:
    """The build's window from the options (they win) or the checkpoint's config; a one-line error for
    what cannot be built."""
    from_config, layers = _from_checkpoint(model_dir)
    if isinstance(from_config, bool) or not isinstance(from_config, (int, type(None))):
        raise LlamaAotError(f"config.json sliding_window must be an integer, got {from_config!r}; fix the checkpoint's config")
    if layers == ():  # layer_types keeps every layer full
        from_config = None
        if window is not None:
            raise LlamaAotError("--sliding-window: this checkpoint's layer_types keeps every layer full_attention; "
                                "compile without --sliding-window")
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
    return AttentionWindow(window, sinks, layers)
