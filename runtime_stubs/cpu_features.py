"""Refuse a CPU package on a CPU that lacks an instruction set it was compiled for, instead of SIGILL.

The compile records in llama-aot.json (``target.cpu_features``) the instruction-set extensions of its LLVM
target that our kernels' code generation emits on its own (the vector ISAs, FMA, F16C, BMI),
named as Linux's /proc/cpuinfo names them; ``check_host_cpu`` compares them with this CPU's flags before the
library is loaded. Extensions reached only through intrinsics we never call (AMX, SGX, ...) are left out, so
a VM that hides AMX still runs an ``-mcpu=sapphirerapids`` build.
"""

from __future__ import annotations

from pathlib import Path

from .errors import LlamaAotError

# LLVM feature name -> /proc/cpuinfo flag (x86)
X86_FEATURES = {
    "sse4.1": "sse4_1", "sse4.2": "sse4_2", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c",
    "bmi": "bmi1", "bmi2": "bmi2",
    "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512cd": "avx512cd", "avx512dq": "avx512dq",
    "avx512vl": "avx512vl", "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16", "avx512fp16": "avx512_fp16",
    "avx512vbmi": "avx512vbmi", "avx512vbmi2": "avx512_vbmi2", "avx512ifma": "avx512ifma",
    "avx512bitalg": "avx512_bitalg", "avx512vpopcntdq": "avx512_vpopcntdq", "avxvnni": "avx_vnni",
}


def required_cpu_features(llvm_features: set[str]) -> list[str]:
    """The /proc/cpuinfo flags a library built with these LLVM features needs (x86; [] elsewhere)."""
    return sorted(X86_FEATURES[f] for f in llvm_features if f in X86_FEATURES)


def host_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None  # not Linux x86: nothing to compare with


def check_host_cpu(package_dir: Path, config: dict, cpuinfo: Path = Path("/proc/cpuinfo")) -> None:
    target = config.get("target") or {}
    required = target.get("cpu_features") or []
    if not required:  # a cross build, or a package from before the check
        return
    flags = host_cpu_flags(cpuinfo)
    if flags is None:
        return
    missing = [f for f in required if f not in flags]
    if missing:
        mcpu = (target.get("tvm_host") or {}).get("mcpu", "?")
        raise LlamaAotError(f"{package_dir} was compiled for a CPU with {', '.join(missing)} (-mcpu {mcpu}), which "
                            "this CPU lacks: compile it on this machine (llama-aot compile ... --target host)")
