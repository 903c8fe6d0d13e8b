"""Which scheme packs each quantized module: one scheme for the body and one for the embedding / lm_head,
or, with ``--quant mixed`` (compression/mixed_precision.py), a scheme per module.

Module paths are our model's (``layers.3.mlp.gate_up_proj``, ``embed_tokens``, ``lm_head``); the model, the
weight plan and the package record all ask the same object, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .base import QuantScheme

#: the modules the embedding-and-lm_head scheme packs (the lm_head is absent when tied)
HEAD_MODULES = ("embed_tokens", "lm_head")


@dataclass(frozen=True)
class SchemeAssignment:
    """``assignment(module_path) -> QuantScheme``: ``per_module`` first, else ``head`` for the embedding and
    lm_head and ``body`` for every projection."""

    body: QuantScheme
    head: QuantScheme
    per_module: Mapping[str, QuantScheme] = field(default_factory=dict)

    @classmethod
    def uniform(cls, body: QuantScheme, head: QuantScheme | None = None) -> "SchemeAssignment":
        return cls(body, head or body)

    @property
    def name(self) -> str:
        """What ``llama-aot.json`` calls the whole assignment: the body scheme's name, or "mixed"."""
        return "mixed" if self.per_module else self.body.name

    def __call__(self, module: str) -> QuantScheme:
        if module in self.per_module:
            return self.per_module[module]
        return self.head if module in HEAD_MODULES else self.body

    def schemes(self, modules: list[str]) -> list[QuantScheme]:
        """The schemes these modules use, once each, by name."""
        found = {self(m).name: self(m) for m in modules}
        return [found[n] for n in sorted(found)]

    def record(self, modules: list[str]) -> dict[str, Any]:
        """The ``quantization`` keys of ``llama-aot.json`` for these quantized modules: the layout of every scheme
        in use and the scheme of each module (what a reader dequantizes each tensor with)."""
        head = self("embed_tokens")
        return {
            "name": self.name,
            "layout": self.body.layout() if not self.per_module else
            {"scheme": "mixed", "family": "mixed", "schemes": {s.name: s.layout() for s in self.schemes(modules)}},
            "embedding_and_lm_head": {"name": head.name, "layout": head.layout()},
            "modules": {m: self(m).name for m in modules},
        }
