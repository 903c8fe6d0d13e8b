"""The machine we are running on as a TVM target (``--target host``)."""

from __future__ import annotations

import os


def host_target_dict(num_threads: int | None = None) -> dict:
    """LLVM target for this CPU: native mcpu so the codegen uses every vector extension it has."""
    from tvm.target import codegen

    cpu = codegen.llvm_get_system_cpu()
    return {"kind": "llvm", "mcpu": cpu, "num-cores": num_threads or os.cpu_count() or 1}
