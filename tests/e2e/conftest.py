"""Shared fixtures: small random checkpoints of several layouts, compiled once per session."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from compiler.compile import CompileOptions, compile_model
from compiler.frontend.synthetic import write_random_checkpoint

from model_configs import CHECKPOINTS

# Prompts longer than the prefill chunk (16) and the KV page (16 tokens) so both boundaries are crossed.
PREFILL_CHUNK = 16


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            config, opts = CHECKPOINTS[name]
            made[name] = write_random_checkpoint(root / name, config, seed=zlib.crc32(name.encode()) % 1000, **opts)
        return made[name]

    return get


@pytest.fixture(scope="session")
def compiled(tmp_path_factory, checkpoint_dir):
    root = tmp_path_factory.mktemp("packages")
    made: dict[tuple, Path] = {}

    def get(name: str, quant: str, model_dir: Path | None = None, int8_activations: bool | None = None,
            keep_embedding_precision: bool = False) -> Path:
        key = (name, quant, int8_activations, keep_embedding_precision)
        if key not in made:
            src = model_dir or checkpoint_dir(name)
            opts = CompileOptions(
                quant=quant, prefill_chunk=PREFILL_CHUNK, context_window=256, int8_activations=int8_activations,
                keep_embedding_precision=keep_embedding_precision,
            )
            made[key] = compile_model(src, root / "-".join(map(str, (name, quant, *key[2:]))), opts)
        return made[key]

    return get
