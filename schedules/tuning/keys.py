"""How a kernel is named in a tuning database: the one piece both compile (apply.py) and extraction (tasks.py)
need, kept apart so that applying records at compile time never imports the extraction, which drives the compiler."""

from __future__ import annotations

TUNING_ATTR = "llama_aot.tuning"  # hand-written kernels carry their key under this PrimFunc attribute


def rule_key(rule: str, func) -> str:
    """Key of a rule-scheduled kernel: rule name + structural hash of the unscheduled PrimFunc."""
    import tvm_ffi

    return f"{rule}/{tvm_ffi.structural_hash(func) & 0xFFFFFFFFFFFFFFFF:016x}"


def int8_key(kind: str, scheme: str, order: str, n: int, k: int) -> str:
    return f"{kind}/{scheme}/{order}/N{n}/K{k}"
