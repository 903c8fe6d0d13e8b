"""What a tuning run is for: the SoC key, the TVM target, and the facts the derived schedules come from.

Why a separate notion from ``compiler.build_target``: a database is only valid for the facts its baseline was
derived from (CPUParams: vector width, registers, cores, caches, ...; the int8 ISA; whether software prefetch
is allowed). They are collected here once, fingerprinted into the database header, and the same object gives
the roofline peaks (bandwidth, FMA throughput) for task weights and the cost model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from runtime_stubs.errors import LlamaAotError

FMA_UNITS = 2  # FMA pipes per core: Zen 2-5, Intel since Haswell, Cortex-X/A7xx (4 x 128-bit on X4; 2 is conservative)


@dataclass
class TuneTarget:
    soc: str  # database key: "host-<mcpu>" for --target host, else the SoC name
    build: object  # compiler.build_target.BuildTarget
    target: object  # tvm.target.Target (CPU)
    params: object  # schedules.cpu.params.CPUParams the pipeline derives for this target (knobs unset)
    int8_isa: str | None
    prefetch_allowed: bool
    bandwidth_bytes_s: float
    ghz: float

    @property
    def is_host(self) -> bool:
        return "mtriple" not in self.build.host

    @property
    def arch(self) -> str:
        return getattr(self.params, "arch", "x86_64")

    @property
    def peak_flops(self) -> float:
        """f32 FMA peak of the cores the kernels run on: cores x lanes x 2 flops x FMA units x clock."""
        p = self.params
        return p.num_cores * p.lanes(32) * 2 * FMA_UNITS * self.ghz * 1e9

    def facts(self) -> dict:
        """The facts a derived schedule depends on (fingerprinted in the database header)."""
        return {
            "tvm_target": {k: v for k, v in self.build.host.items()},
            "cpu": cpu_facts(self.params),
            "int8_isa": self.int8_isa,
            "software_prefetch": self.prefetch_allowed,
        }


def knob_fields(params) -> list[str]:
    """CPUParams fields that are knobs: default None ("derive"). The others are facts."""
    return [f.name for f in dataclasses.fields(params) if f.default is None]


def cpu_facts(params) -> dict:
    knobs = set(knob_fields(params))
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params) if f.name not in knobs}


def pipeline_params(bt, target, cpu_facts: str | None = None):
    """The CPUParams compile gives our rules for this build (compiler/compile.py does the same call)."""
    from schedules.cpu.params import CPUParams
    from targets.cpu_facts import facts_for_build

    return CPUParams.for_build(target, facts_for_build(bt.soc, cpu_facts))


def resolve(options) -> TuneTarget:
    """A TuneTarget from CompileOptions (target/soc/device/threads as compile takes them)."""
    from compiler import build_target
    from schedules.cpu.params import software_prefetch_allowed

    bt = build_target.resolve(options.target, options.soc, options.device, options.num_threads, options.vulkan_profile)
    if bt.device_api is not None:
        raise LlamaAotError(
            f"tuning covers CPU kernels only; use --device cpu (or --target host), not {bt.device_api}"
        )
    from tvm.target import Target

    target = Target(bt.host)
    params = pipeline_params(bt, target, getattr(options, "cpu_facts", None))
    isa = _int8_isa(target)
    soc = bt.soc
    if soc is None:
        from targets import load_soc

        soc = load_soc("host")
    name = bt.name if bt.soc is not None and not soc.is_host else f"host-{bt.host.get('mcpu', 'cpu')}"
    cluster = max(soc.cpu.clusters, key=lambda c: (c.role != "efficiency", c.max_ghz))
    return TuneTarget(
        soc=name,
        build=bt,
        target=target,
        params=params,
        int8_isa=isa,
        prefetch_allowed=software_prefetch_allowed(target),
        bandwidth_bytes_s=soc.peak_bandwidth_bytes_per_s,
        ghz=float(cluster.max_ghz),
    )


def _int8_isa(target) -> str | None:
    try:  # the int8 room moves int8_dot_isa into int8_dot.py
        from schedules.cpu.int8_dot import int8_dot_isa  # type: ignore
    except ImportError:
        from schedules.cpu.int8_gemm import int8_dot_isa
    return int8_dot_isa(target)
