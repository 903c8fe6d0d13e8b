"""Text for ``llama-aot targets`` (the table) and ``llama-aot targets NAME`` (one SoC in full)."""

from __future__ import annotations

import json

from .registry import SocSpec, iter_facts, list_socs, load_soc
from .schema import CpuCluster, Fact

def _q(confirmed: bool) -> str:
    return "" if confirmed else "?"


def _cpu_summary(soc: SocSpec) -> str:
    parts = []
    for c in soc.cpu.clusters:
        core = c.core.replace("Cortex-", "")
        parts.append(f"{c.count}x{core}@{c.max_ghz:.2f}{_q(c.confirmed)}")
    return " ".join(parts)


def _gpu_summary(soc: SocSpec) -> str:
    if soc.gpu is None:
        return "-"
    return f"{soc.gpu.name.value}{_q(soc.gpu.name.confirmed)} ({', '.join(soc.gpu_apis)})"


def _bandwidth(soc: SocSpec) -> str:
    bw = soc.memory.peak_bandwidth_gbs
    return f"{bw.value:g} GB/s{_q(bw.confirmed)}"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def list_text() -> str:
    """One row per known SoC: name, CPU clusters, GPU + APIs, peak DRAM bandwidth."""
    rows = [["NAME", "CPU (count x core @ max GHz)", "GPU (APIs, preferred first)", "DRAM BW"]]
    for soc in list_socs():
        rows.append([soc.name, _cpu_summary(soc), _gpu_summary(soc), _bandwidth(soc)])
    return (
        _table(rows)
        + "\n\n'?' marks an unconfirmed value. `llama-aot targets NAME` shows every fact with its source."
    )


def _fmt_value(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, tuple):
        return ", ".join(str(x) for x in v) if v else "(none)"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _fact_line(key: str, f: Fact | CpuCluster, width: int) -> list[str]:
    if isinstance(f, CpuCluster):
        value = f"{f.count}x {f.core} ({f.mcpu}) @ {f.max_ghz:g} GHz, {f.role}"
    else:
        value = _fmt_value(f.value)
    flag = "" if f.confirmed else "  [UNCONFIRMED]"
    out = [f"  {key.ljust(width)}  {value}{flag}", f"  {' ' * width}    source: {f.source}"]
    if f.note:
        out.append(f"  {' ' * width}    note: {f.note}")
    return out


def show_text(name: str, weight_bytes_per_token: float | None = None) -> str:
    """Every fact of one SoC (name or path) with sources and unconfirmed flags, the derived TVM
    host and device targets as JSON, cache parameters, and the decode ceiling when
    ``weight_bytes_per_token`` is given."""
    soc = load_soc(name)
    facts = list(iter_facts(soc))
    width = max(len(k) for k, _ in facts)
    out = [f"{soc.name}: {soc.display_name}", f"  vendor: {soc.vendor}   os: {soc.os}"]
    if soc.devices:
        out.append(f"  devices: {soc.devices}")
    if soc.is_host:
        out.append("  facts detected on this machine at load time")
    out.append(f"  file: {soc.path}")
    section = None
    for key, f in facts:
        head = key.split(".", 1)[0]
        if head != section:
            section = head
            out.append("")
            out.append(f"[{section}]")
        out.extend(_fact_line(key, f, width))
    if soc.gpu is None:
        out += ["", "[gpu]", "  (none: CPU only)"]
    unconfirmed = [k for k, f in facts if not f.confirmed]
    out += ["", f"unconfirmed facts ({len(unconfirmed)}): {', '.join(unconfirmed) or 'none'}"]

    out += ["", f"TVM host target (num-cores = {soc.num_threads}: prime + performance cores):"]
    out.append(json.dumps(soc.tvm_host_target(), indent=2))
    for api in soc.gpu_apis:
        out += ["", f"TVM device target ({api}):", json.dumps(soc.tvm_device_target(api), indent=2)]
    out += ["", "cache parameters (bytes):", json.dumps(soc.cache_params(), indent=2)]
    out += ["", f"usable memory for an app: {soc.usable_memory_bytes / 1e9:g} GB"]
    if weight_bytes_per_token is not None:
        tps = soc.decode_ceiling_tokens_per_s(weight_bytes_per_token)
        out.append(
            f"decode ceiling: {tps:.1f} tokens/s = {soc.memory.peak_bandwidth_gbs.value:g} GB/s "
            f"/ {weight_bytes_per_token / 1e9:.3g} GB of weights per token (batch 1, upper bound)"
        )
    return "\n".join(out)
