"""The memory-hierarchy facts of one CPU that the schedules derive their parameters from.

One object for every source, so a schedule never knows where its numbers came from:

* a SoC file (``--soc X``): ``CPUFacts.from_soc(load_soc("snapdragon-8-gen-3"))``;
* this machine (``--target host``, and any target of the host's architecture): the ``host`` entry of the
  registry, detected from sysfs at load time (targets/hostdetect.py);
* nothing known (a cross target without ``--soc``): per-architecture defaults, with ``source`` saying so
  and a warning logged, never silently.

Instruction-set facts (vector width, registers, int8 dot product) come from the TVM target itself
(schedules/cpu/params.py), because a user may compile for another ``-mcpu`` of the same machine.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass

from runtime_stubs.errors import LlamaAotError

logger = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB

# Associativity assumed where a SoC file does not state it (most L1d/L2 of current cores are 4-16 way).
DEFAULT_WAYS = 8

# Per-architecture defaults for targets without facts: (L1d, L2 per core, last level).
_ARCH_DEFAULT_CACHES = {
    # Cortex-A720/X4 class: 64 KiB L1d, 512 KiB L2 (X4 up to 2 MiB), a few MiB of L3.
    "aarch64": (64 * KiB, 512 * KiB, 8 * MiB),
    "x86_64": (32 * KiB, 1 * MiB, 16 * MiB),
}


@dataclass(frozen=True)
class CPUFacts:
    """Caches as seen by one core of the cores the threads run on (L2: that core's share)."""

    l1d_bytes: int = 32 * KiB
    l2_bytes: int = 512 * KiB  # per core: a shared L2 is divided by the cores sharing it
    l3_bytes: int = 8 * MiB  # last level shared by all cores (L3, else the SLC); 0 = none
    l1d_ways: int = DEFAULT_WAYS
    l2_ways: int = DEFAULT_WAYS
    l3_ways: int = 16
    line_bytes: int = 64
    stream_prefetch: str = "t0"  # software prefetch kind for read-once streams (targets/schema.py)
    num_cores: int | None = None  # threads the kernels are sized for (None: the target's num-cores)
    peak_bandwidth_gbs: float | None = None
    source: str = "default"

    @classmethod
    def from_soc(cls, soc) -> "CPUFacts":
        """Facts of a registry entry (targets/registry.py SocSpec), host included."""
        c = soc.cache
        shared = max(1, c.l2_shared_cores.value)
        last = c.l3_kib.value or c.slc_kib.value

        def ways(fact, default):
            return fact.value if fact is not None else default

        return cls(
            l1d_bytes=c.l1d_kib.value * KiB,
            l2_bytes=c.l2_kib.value * KiB // shared,
            l3_bytes=last * KiB,
            l1d_ways=ways(c.l1d_ways, DEFAULT_WAYS),
            l2_ways=ways(c.l2_ways, DEFAULT_WAYS),
            l3_ways=ways(c.l3_ways, 16),
            line_bytes=c.line_bytes.value,
            stream_prefetch=c.stream_prefetch.value if c.stream_prefetch is not None else "t0",
            num_cores=soc.num_threads,
            peak_bandwidth_gbs=soc.memory.peak_bandwidth_gbs.value if soc.memory.peak_bandwidth_gbs else None,
            source=f"soc:{soc.name}",
        )

    @classmethod
    def host(cls) -> "CPUFacts":
        from .registry import load_soc  # pylint: disable=import-outside-toplevel

        return cls.from_soc(load_soc("host"))

    @classmethod
    def arch_default(cls, arch: str) -> "CPUFacts":
        l1, l2, l3 = _ARCH_DEFAULT_CACHES.get(arch, (32 * KiB, 256 * KiB, 4 * MiB))
        return cls(l1d_bytes=l1, l2_bytes=l2, l3_bytes=l3, source=f"default:{arch}")

    def replace(self, **overrides) -> "CPUFacts":
        """These facts with some overridden (``source`` says which)."""
        if not overrides:
            return self
        names = ",".join(sorted(overrides))
        return dataclasses.replace(self, **overrides, source=f"{self.source}+override({names})")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def facts_for(arch: str, is_host_arch: bool, soc=None) -> CPUFacts:
    """The facts a target's schedules use: the SoC's when given; the host's for a target of the host's
    architecture (another ``-mcpu`` of this machine keeps this machine's caches); else the architecture's
    defaults, logged, since nothing describes that CPU (pass ``--soc``)."""
    if soc is not None:
        return CPUFacts.from_soc(soc)
    if is_host_arch:
        return CPUFacts.host()
    logger.warning(
        "no cache facts for this %s target: schedules use the %s defaults; compile with --soc NAME "
        "(or a .toml of your SoC) to derive them from its caches", arch, arch,
    )
    return CPUFacts.arch_default(arch)


def facts_for_build(soc=None, overrides: str | None = None) -> CPUFacts | None:
    """The facts a build's CPU schedules get: the SoC's (``--soc``), with ``--cpu-facts`` overrides on top of
    them or of this machine's; None = let ``facts_for`` decide from the target's architecture."""
    facts = CPUFacts.from_soc(soc) if soc is not None else None
    if overrides:
        facts = (facts or CPUFacts.host()).replace(**parse_overrides(overrides))
    return facts


_OVERRIDE_KEYS = {  # short name -> (field, is a size)
    "l1d": ("l1d_bytes", True), "l2": ("l2_bytes", True), "l3": ("l3_bytes", True),
    "l1d_ways": ("l1d_ways", False), "l2_ways": ("l2_ways", False), "l3_ways": ("l3_ways", False),
    "line": ("line_bytes", False),  # cores: --threads
    "stream_prefetch": ("stream_prefetch", None),  # a kind, not a number
}


def parse_overrides(text: str) -> dict:
    """``"l1d=48K,l2=1M,l3=0,l1d_ways=12,stream_prefetch=nta"`` -> CPUFacts field overrides (sizes take K/M
    suffixes)."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, value = item.partition("=")
        if key not in _OVERRIDE_KEYS or not value:
            raise LlamaAotError(
                f"--cpu-facts: cannot read {item!r}; use KEY=VALUE pairs with KEY in {', '.join(_OVERRIDE_KEYS)} "
                "(e.g. l1d=48K,l2=1M,l3=32M,l1d_ways=12)"
            )
        field_name, is_size = _OVERRIDE_KEYS[key]
        if is_size is None:
            from .schema import STREAM_PREFETCH_KINDS  # pylint: disable=import-outside-toplevel

            if value.strip() not in STREAM_PREFETCH_KINDS:
                raise LlamaAotError(f"--cpu-facts: {key} must be one of {', '.join(STREAM_PREFETCH_KINDS)}, got {value!r}")
            out[field_name] = value.strip()
            continue
        m = re.fullmatch(r"(\d+)([KM]?)", value.strip().upper()) if is_size else re.fullmatch(r"(\d+)()", value.strip())
        number = int(m.group(1)) * {"": 1, "K": KiB, "M": MiB}[m.group(2)] if m else -1
        if number < (0 if key == "l3" else 1):
            raise LlamaAotError(f"--cpu-facts: {key} must be a {'size like 48K or 1M' if is_size else 'positive integer'}, got {value!r}")
        out[field_name] = number
    return out
