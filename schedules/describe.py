"""``llama-aot targets X --schedules``: the schedule parameters a SoC's (or this machine's) facts give.

The CPU section lists every derived knob with its value and its derivation (schedules/cpu/params.py); the
GPU schedules add their section here when they derive parameters too.
"""

from __future__ import annotations

import json


def cpu_schedules_text(soc) -> str:
    """The CPU knobs ``llama-aot compile --soc <soc> --device cpu`` would use, with the reason for each."""
    from targets.cpu_facts import CPUFacts  # pylint: disable=import-outside-toplevel

    from .cpu.params import CPUParams  # pylint: disable=import-outside-toplevel

    params = CPUParams.for_build(soc.tvm_host_target(), CPUFacts.from_soc(soc))
    rows = params.derivations()
    width = max(len(name) for name, _, _ in rows)
    out = [f"[schedules.cpu] {soc.name}: target {json.dumps(soc.tvm_host_target())}"]
    rec = params.schedule_record()["facts"]
    out.append("  facts: " + ", ".join(f"{k}={v}" for k, v in rec.items()))
    for name, value, why in rows:
        shown = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        out.append(f"  {name.ljust(width)}  {shown}")
        out.append(f"  {' ' * width}    {why}")
    return "\n".join(out)
