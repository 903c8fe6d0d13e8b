"""Sliding-window attention with attention sinks (``compile --sliding-window W --attention-sinks S``): the
package's contract, read by the engine; the compiler's side is compiler/model/attention_window.py.

Semantics: every query sees the first S tokens of its sequence plus the most recent W - S tokens,
itself included (S = 0: a plain window of W, as Mistral's ``sliding_window``). Keys keep their
original positions: RoPE is applied once, at the token's position in the whole sequence, and never
re-based (unlike StreamingLLM, which renumbers the cache). When every layer is windowed, generation
goes on past the context window with flat memory: the cache never holds more than
:meth:`AttentionWindow.cache_tokens` tokens. A checkpoint's ``layer_types`` can window only some layers
(``sliding_attention``) and keep the others full (``full_attention``): each group of layers gets its own
cache (``runtime.kv_cache_windowed``), the full ones sized to the context window, which then bounds the
sequence as without a window.

How it maps onto TVM's paged KV cache (``support_sliding_window``; the runtime slides in
``BeginForward``, after reserving the new tokens, down to the per-sequence window it was given):

* the cache is given the window ``W + C - 1`` (C: the prefill chunk), so that after it slides a
  chunk's first row still finds the W - S - 1 tokens before it; the kernels then mask each row to its
  own band (compiler/model/kv_kernels.py: the ragged kernel for the chunk's own keys, the paged
  prefill and decode kernels for the cached prefix, all given ``(W, S)``);
* TVM numbers a new token by the cache's length, which stops growing once it slides; so the cache
  applies no RoPE (``RopeMode.NONE``) and the model rotates q and k itself, at positions the caller
  passes (``prefill(input_embed, positions, caches)``, ``decode(...)``), the token's index in the
  whole sequence.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttentionWindow:
    window: int  # W: tokens a query sees, itself and the sinks included
    sinks: int  # S: the sequence's first tokens, always visible
    # the windowed layers when only some are (a checkpoint's ``layer_types``); None: every layer. The
    # others attend to the whole sequence and their cache grows to the context window.
    layers: tuple[int, ...] | None = None

    def windows(self, layer_id: int) -> bool:
        return self.layers is None or layer_id in self.layers

    @property
    def every_layer(self) -> bool:
        """Every layer windowed: generation may go past the context window with flat memory."""
        return self.layers is None

    @property
    def recent(self) -> int:
        """Tokens of the recent band, the query included."""
        return self.window - self.sinks

    def cache_window(self, prefill_chunk: int) -> int:
        """The per-sequence window given to TVM's cache (it slides before a chunk's attention)."""
        return self.window + prefill_chunk - 1

    def cache_tokens(self, prefill_chunk: int, page_size: int) -> int:
        """Capacity of the cache: its window, a chunk being appended, a partial page at each end."""
        return self.cache_window(prefill_chunk) + prefill_chunk + 2 * page_size

    def to_json(self, prefill_chunk: int) -> dict:
        out = {"sliding_window": self.window, "attention_sinks": self.sinks,
               "cache_window": self.cache_window(prefill_chunk)}
        if self.layers is not None:
            out["windowed_layers"] = list(self.layers)
        return out


KNOWN_OPTIONS = {"sliding_window", "attention_sinks", "cache_window", "windowed_layers", "kv_cache_dtype"}


def from_package(config: dict) -> AttentionWindow | None:
    """The window a package was compiled with (its ``llama-aot.json``), or None; an attention option this
    runtime does not know (a newer compiler's) is refused rather than ignored."""
    from .errors import LlamaAotError  # pylint: disable=import-outside-toplevel

    att = config.get("attention") or {}
    unknown = sorted(set(att) - KNOWN_OPTIONS)
    if unknown:
        raise LlamaAotError(f"the package uses attention options this runtime cannot honour ({', '.join(unknown)}); "
                            "run it with the llama-aot that compiled it, or recompile it with this one")
    if att.get("sliding_window") is None:
        return None
    layers = att.get("windowed_layers")
    return AttentionWindow(int(att["sliding_window"]), int(att["attention_sinks"]),
                           None if layers is None else tuple(int(i) for i in layers))
