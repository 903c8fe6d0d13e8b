"""Schema of a SoC data file (``targets/socs/<name>.toml``), checked when the file is loaded.

A *fact* is a table ``{ value = ..., source = "...", confirmed = false, note = "..." }``:
``source`` (a short citation) is required for every fact, ``confirmed`` defaults to true, and a fact
with ``confirmed = false`` must say in ``note`` why it is an estimate.  CPU clusters are records
with their own ``source``/``confirmed``/``note``.  See docs/socs.md for the full format.

Every problem raises :class:`runtime_stubs.errors.LlamaAotError` with one line naming the file and the
key (``<file>: [gpu.apis] ...``) and what to change.  Nothing here imports TVM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from runtime_stubs.errors import LlamaAotError
from runtime_stubs.messages import plain, shown

SCHEMA_VERSION = 1
GPU_APIS = ("opencl", "vulkan", "metal")
OS_NAMES = ("android", "ios", "linux", "macos", "windows")
CLUSTER_ROLES = ("prime", "performance", "efficiency")
DETECT_KINDS = ("host",)
# Software prefetch for a read-once stream: "nta" (non-temporal, x86 prefetchnta / locality 0), "t0" (into L1
# and the outer levels, prefetcht0 / locality 3), "none" (hardware prefetchers only)
STREAM_PREFETCH_KINDS = ("nta", "t0", "none")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
_MATTR_RE = re.compile(r"^[+-][a-z0-9][a-z0-9._-]*$")
_VK_VERSION_RE = re.compile(r"^[1-9]\.[0-9]+$")

# Far beyond any SoC fact (counts, KiB, bytes; GHz, GB, GB/s): a larger value is a typo or a corrupt file,
# and would overflow TVM's int32 target attributes or int(GB * 1e9) later.
MAX_INT = 2**31 - 1
MAX_NUMBER = 1e9

T = TypeVar("T")


@dataclass(frozen=True)
class Fact(Generic[T]):
    """One fact about a SoC with where it comes from."""

    value: T
    source: str
    confirmed: bool = True
    note: str = ""


@dataclass(frozen=True)
class CpuCluster:
    """A group of identical cores; ``role`` decides whether TVM threads run there."""

    core: str
    mcpu: str
    count: int
    max_ghz: float
    role: str  # prime | performance | efficiency
    source: str
    confirmed: bool = True
    note: str = ""


@dataclass(frozen=True)
class CpuSpec:
    clusters: tuple[CpuCluster, ...]
    mtriple: Fact[str]
    mcpu: Fact[str]
    mattr: Fact[tuple[str, ...]]


@dataclass(frozen=True)
class CacheSpec:
    """Caches seen by one core of the type named by ``cpu.mcpu`` (the core that runs most threads)."""

    line_bytes: Fact[int]
    l1d_kib: Fact[int]
    l2_kib: Fact[int]
    l2_shared_cores: Fact[int]
    l3_kib: Fact[int]  # 0 = none
    slc_kib: Fact[int]  # 0 = none, or folded into l3 (see its note)
    # associativity (optional): the schedules' blocking keeps a way free for streamed data; 8 when unknown
    l1d_ways: Fact[int] | None = None
    l2_ways: Fact[int] | None = None
    l3_ways: Fact[int] | None = None
    # how software prefetch should bring in a read-once stream (the decode weights): "nta", "t0" or "none"
    # (STREAM_PREFETCH_KINDS above); "t0" when unknown
    stream_prefetch: Fact[str] | None = None


@dataclass(frozen=True)
class GpuSpec:
    name: Fact[str]
    apis: Fact[tuple[str, ...]]  # preferred first
    subgroup_sizes: Fact[tuple[int, ...]]
    max_workgroup_size: Fact[int]
    shared_memory_bytes: Fact[int]
    shared_memory_on_chip: Fact[bool]
    fp16: Fact[bool]
    int8_dot: Fact[bool]
    config: Fact[str] | None = None
    vulkan_version: Fact[str] | None = None  # required when "vulkan" is in apis
    vulkan_storage_8bit: Fact[bool] | None = None
    vulkan_storage_16bit: Fact[bool] | None = None


@dataclass(frozen=True)
class MemorySpec:
    dram_type: Fact[str]
    peak_bandwidth_gbs: Fact[float]
    ram_gb: Fact[float]
    usable_app_memory_gb: Fact[float]


@dataclass(frozen=True)
class ParsedSoc:
    """Everything in a validated file; :class:`targets.registry.SocSpec` wraps it."""

    name: str
    display_name: str
    vendor: str
    os: str
    devices: str
    detect: str | None
    cpu: CpuSpec
    cache: CacheSpec
    gpu: GpuSpec | None
    memory: MemorySpec


# ----------------------------------------------------------------------------------------------
# checking helpers


class _Ctx:
    def __init__(self, origin: str):
        self.origin = origin

    def fail(self, key: str, msg: str) -> LlamaAotError:
        return LlamaAotError(f"{self.origin}: [{key}] {msg}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float))) and not isinstance(v, bool)


def _check_keys(ctx: _Ctx, key: str, table: dict, required: tuple, optional: tuple = ()) -> None:
    for k in required:
        if k not in table:
            where = f"{key}.{k}" if key else k
            raise ctx.fail(where, f"missing required key '{k}'; add it (see docs/socs.md)")
    allowed = set(required) | set(optional)
    for k in table:
        if k not in allowed:
            where = f"{key}.{plain(k)}" if key else plain(k)
            raise ctx.fail(
                where, f"unknown key {shown(k)}; expected one of: {', '.join(sorted(allowed))}"
            )


def _table(ctx: _Ctx, key: str, v: Any) -> dict:
    if not isinstance(v, dict):
        raise ctx.fail(key, f"must be a table, got {type(v).__name__}")
    return v


def _str(ctx: _Ctx, key: str, v: Any, *, allow_empty: bool = False) -> str:
    if not isinstance(v, str):
        raise ctx.fail(key, f"must be a string, got {type(v).__name__} {shown(v)}")
    if not allow_empty and not v.strip():
        raise ctx.fail(key, "must not be empty")
    return v


def _positive_int(ctx: _Ctx, key: str, v: Any, *, allow_zero: bool = False) -> int:
    if not _is_int(v):
        raise ctx.fail(key, f"must be an integer, got {type(v).__name__} {shown(v)}")
    if v < 0 or (v == 0 and not allow_zero):
        need = "zero or positive" if allow_zero else "positive"
        raise ctx.fail(key, f"must be {need}, got {shown(v)}")
    if v > MAX_INT:
        raise ctx.fail(key, f"{shown(v)} is implausibly large (more than {MAX_INT}); fix the value")
    return v


def _positive_num(ctx: _Ctx, key: str, v: Any) -> float:
    if not _is_num(v):
        raise ctx.fail(key, f"must be a number, got {type(v).__name__} {shown(v)}")
    if not v > 0:
        raise ctx.fail(key, f"must be positive, got {shown(v)}")
    if not v <= MAX_NUMBER:  # inf, or an int too large for a float
        raise ctx.fail(key, f"{shown(v)} is implausibly large (more than {MAX_NUMBER:g}); fix the value")
    return float(v)


def _bool(ctx: _Ctx, key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ctx.fail(key, f"must be true or false, got {shown(v)}")
    return v


def _provenance(ctx: _Ctx, key: str, table: dict) -> tuple[str, bool, str]:
    if "source" not in table:
        raise ctx.fail(key, "fact has no 'source'; add source = \"<where this number comes from>\"")
    source = _str(ctx, f"{key}.source", table["source"])
    confirmed = _bool(ctx, f"{key}.confirmed", table.get("confirmed", True))
    note = _str(ctx, f"{key}.note", table.get("note", ""), allow_empty=True)
    if not confirmed and not note.strip():
        raise ctx.fail(key, "unconfirmed fact needs a 'note' saying why it is an estimate")
    return source, confirmed, note


def _fact(ctx: _Ctx, key: str, raw: Any, check: Callable[[_Ctx, str, Any], Any]) -> Fact:
    if not isinstance(raw, dict):
        raise ctx.fail(
            key,
            f"must be a fact table {{ value = ..., source = \"...\" }}, got {shown(raw)}",
        )
    _check_keys(ctx, key, raw, ("value",), ("source", "confirmed", "note"))
    source, confirmed, note = _provenance(ctx, key, raw)
    value = check(ctx, f"{key}.value", raw["value"])
    return Fact(value=value, source=source, confirmed=confirmed, note=note)


def _list_of(item_check: Callable[[_Ctx, str, Any], Any], *, non_empty: bool = True):
    def check(ctx: _Ctx, key: str, v: Any) -> tuple:
        if not isinstance(v, list):
            raise ctx.fail(key, f"must be a list, got {type(v).__name__} {shown(v)}")
        if non_empty and not v:
            raise ctx.fail(key, "must not be empty")
        return tuple(item_check(ctx, f"{key}[{i}]", x) for i, x in enumerate(v))

    return check


def _one_of(choices: tuple[str, ...], what: str):
    def check(ctx: _Ctx, key: str, v: Any) -> str:
        _str(ctx, key, v)
        if v not in choices:
            raise ctx.fail(key, f"unknown {what} {shown(v)}; use one of: {', '.join(choices)}")
        return v

    return check


def _mattr_item(ctx: _Ctx, key: str, v: Any) -> str:
    _str(ctx, key, v)
    if not _MATTR_RE.fullmatch(v):
        raise ctx.fail(key, f"bad LLVM feature {shown(v)}; write it as +name or -name, e.g. +dotprod")
    return v


def _nonneg_int(ctx: _Ctx, key: str, v: Any) -> int:
    return _positive_int(ctx, key, v, allow_zero=True)


def _power_of_two(ctx: _Ctx, key: str, v: Any) -> int:
    _positive_int(ctx, key, v)
    if v & (v - 1):
        raise ctx.fail(key, f"must be a power of two, got {v}")
    return v


def _vk_version(ctx: _Ctx, key: str, v: Any) -> str:
    _str(ctx, key, v)
    if not _VK_VERSION_RE.fullmatch(v):
        raise ctx.fail(key, f"write the Vulkan version as MAJOR.MINOR, e.g. \"1.3\", got {shown(v)}")
    return v


# ----------------------------------------------------------------------------------------------
# sections


def _parse_cluster(ctx: _Ctx, key: str, raw: Any) -> CpuCluster:
    t = _table(ctx, key, raw)
    _check_keys(
        ctx, key, t, ("core", "mcpu", "count", "max_ghz", "role"), ("source", "confirmed", "note")
    )
    source, confirmed, note = _provenance(ctx, key, t)
    return CpuCluster(
        core=_str(ctx, f"{key}.core", t["core"]),
        mcpu=_str(ctx, f"{key}.mcpu", t["mcpu"]),
        count=_positive_int(ctx, f"{key}.count", t["count"]),
        max_ghz=_positive_num(ctx, f"{key}.max_ghz", t["max_ghz"]),
        role=_one_of(CLUSTER_ROLES, "cluster role")(ctx, f"{key}.role", t["role"]),
        source=source,
        confirmed=confirmed,
        note=note,
    )


def _parse_cpu(ctx: _Ctx, raw: Any) -> CpuSpec:
    t = _table(ctx, "cpu", raw)
    _check_keys(ctx, "cpu", t, ("clusters", "mtriple", "mcpu", "mattr"))
    clusters_raw = t["clusters"]
    if not isinstance(clusters_raw, list) or not clusters_raw:
        raise ctx.fail("cpu.clusters", "must be a non-empty list of cluster records")
    clusters = tuple(
        _parse_cluster(ctx, f"cpu.clusters[{i}]", c) for i, c in enumerate(clusters_raw)
    )
    if all(c.role == "efficiency" for c in clusters):
        raise ctx.fail("cpu.clusters", "at least one cluster must have role prime or performance")
    return CpuSpec(
        clusters=clusters,
        mtriple=_fact(ctx, "cpu.mtriple", t["mtriple"], _str),
        mcpu=_fact(ctx, "cpu.mcpu", t["mcpu"], _str),
        mattr=_fact(ctx, "cpu.mattr", t["mattr"], _list_of(_mattr_item, non_empty=False)),
    )


def _parse_cache(ctx: _Ctx, raw: Any) -> CacheSpec:
    t = _table(ctx, "cache", raw)
    keys = ("line_bytes", "l1d_kib", "l2_kib", "l2_shared_cores", "l3_kib", "slc_kib")
    ways = ("l1d_ways", "l2_ways", "l3_ways")
    _check_keys(ctx, "cache", t, keys, ways + ("stream_prefetch",))
    optional = {k: _fact(ctx, f"cache.{k}", t[k], _positive_int) for k in ways if k in t}
    if "stream_prefetch" in t:
        optional["stream_prefetch"] = _fact(
            ctx, "cache.stream_prefetch", t["stream_prefetch"], _one_of(STREAM_PREFETCH_KINDS, "stream prefetch kind")
        )
    return CacheSpec(
        **optional,
        line_bytes=_fact(ctx, "cache.line_bytes", t["line_bytes"], _power_of_two),
        l1d_kib=_fact(ctx, "cache.l1d_kib", t["l1d_kib"], _positive_int),
        l2_kib=_fact(ctx, "cache.l2_kib", t["l2_kib"], _positive_int),
        l2_shared_cores=_fact(ctx, "cache.l2_shared_cores", t["l2_shared_cores"], _positive_int),
        l3_kib=_fact(ctx, "cache.l3_kib", t["l3_kib"], _nonneg_int),
        slc_kib=_fact(ctx, "cache.slc_kib", t["slc_kib"], _nonneg_int),
    )


_GPU_REQUIRED = (
    "name",
    "apis",
    "subgroup_sizes",
    "max_workgroup_size",
    "shared_memory_bytes",
    "shared_memory_on_chip",
    "fp16",
    "int8_dot",
)
_GPU_VULKAN = ("vulkan_version", "vulkan_storage_8bit", "vulkan_storage_16bit")


def _parse_gpu(ctx: _Ctx, raw: Any) -> GpuSpec:
    t = _table(ctx, "gpu", raw)
    _check_keys(ctx, "gpu", t, _GPU_REQUIRED, ("config",) + _GPU_VULKAN)
    apis = _fact(ctx, "gpu.apis", t["apis"], _list_of(_one_of(GPU_APIS, "GPU API")))
    if len(set(apis.value)) != len(apis.value):
        raise ctx.fail("gpu.apis.value", "lists an API twice; list each API once")
    vk: dict[str, Fact | None] = {k: None for k in _GPU_VULKAN}
    if "vulkan" in apis.value:
        for k in _GPU_VULKAN:
            if k not in t:
                raise ctx.fail(
                    f"gpu.{k}", f"missing required key '{k}' (needed because apis has vulkan)"
                )
        vk["vulkan_version"] = _fact(ctx, "gpu.vulkan_version", t["vulkan_version"], _vk_version)
        for k in ("vulkan_storage_8bit", "vulkan_storage_16bit"):
            vk[k] = _fact(ctx, f"gpu.{k}", t[k], _bool)
    else:
        for k in _GPU_VULKAN:
            if k in t:
                raise ctx.fail(f"gpu.{k}", "only allowed when apis has vulkan; remove it")
    return GpuSpec(
        name=_fact(ctx, "gpu.name", t["name"], _str),
        apis=apis,
        subgroup_sizes=_fact(
            ctx, "gpu.subgroup_sizes", t["subgroup_sizes"], _list_of(_positive_int)
        ),
        max_workgroup_size=_fact(
            ctx, "gpu.max_workgroup_size", t["max_workgroup_size"], _positive_int
        ),
        shared_memory_bytes=_fact(
            ctx, "gpu.shared_memory_bytes", t["shared_memory_bytes"], _positive_int
        ),
        shared_memory_on_chip=_fact(
            ctx, "gpu.shared_memory_on_chip", t["shared_memory_on_chip"], _bool
        ),
        fp16=_fact(ctx, "gpu.fp16", t["fp16"], _bool),
        int8_dot=_fact(ctx, "gpu.int8_dot", t["int8_dot"], _bool),
        config=_fact(ctx, "gpu.config", t["config"], _str) if "config" in t else None,
        **vk,
    )


def _parse_memory(ctx: _Ctx, raw: Any) -> MemorySpec:
    t = _table(ctx, "memory", raw)
    _check_keys(ctx, "memory", t, ("dram_type", "peak_bandwidth_gbs", "ram_gb", "usable_app_memory_gb"))
    mem = MemorySpec(
        dram_type=_fact(ctx, "memory.dram_type", t["dram_type"], _str),
        peak_bandwidth_gbs=_fact(
            ctx, "memory.peak_bandwidth_gbs", t["peak_bandwidth_gbs"], _positive_num
        ),
        ram_gb=_fact(ctx, "memory.ram_gb", t["ram_gb"], _positive_num),
        usable_app_memory_gb=_fact(
            ctx, "memory.usable_app_memory_gb", t["usable_app_memory_gb"], _positive_num
        ),
    )
    if mem.usable_app_memory_gb.value > mem.ram_gb.value:
        raise ctx.fail(
            "memory.usable_app_memory_gb",
            f"{mem.usable_app_memory_gb.value} GB is more than ram_gb {mem.ram_gb.value} GB; fix one",
        )
    return mem


_TOP_REQUIRED = ("name", "display_name", "vendor", "os", "cpu", "cache", "memory")
_TOP_OPTIONAL = ("schema_version", "devices", "detect", "gpu")


def parse_soc(data: dict, origin: str, *, expected_name: str | None = None) -> ParsedSoc:
    """Validate the already-decoded TOML ``data``; ``origin`` (usually the path) prefixes errors."""
    ctx = _Ctx(origin)
    if not isinstance(data, dict):
        raise ctx.fail("", "the file must be a TOML table")
    _check_keys(ctx, "", data, _TOP_REQUIRED, _TOP_OPTIONAL)
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ctx.fail(
            "schema_version", f"is {shown(version)}; this llama-aot reads schema_version = {SCHEMA_VERSION}"
        )
    name = _str(ctx, "name", data["name"])
    if not _NAME_RE.fullmatch(name):
        raise ctx.fail("name", f"{shown(name)} must be lower-case letters, digits, '-' and '.'")
    if expected_name is not None and name != expected_name:
        raise ctx.fail(
            "name", f"is {shown(name)} but the file is named '{expected_name}.toml'; make them the same"
        )
    detect = data.get("detect")
    if detect is not None:
        _one_of(DETECT_KINDS, "detect kind")(ctx, "detect", detect)
    return ParsedSoc(
        name=name,
        display_name=_str(ctx, "display_name", data["display_name"]),
        vendor=_str(ctx, "vendor", data["vendor"]),
        os=_one_of(OS_NAMES, "os")(ctx, "os", data["os"]),
        devices=_str(ctx, "devices", data.get("devices", ""), allow_empty=True),
        detect=detect,
        cpu=_parse_cpu(ctx, data["cpu"]),
        cache=_parse_cache(ctx, data["cache"]),
        gpu=_parse_gpu(ctx, data["gpu"]) if "gpu" in data else None,
        memory=_parse_memory(ctx, data["memory"]),
    )
