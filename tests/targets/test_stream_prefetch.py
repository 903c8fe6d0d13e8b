"""The ``stream_prefetch`` cache fact: where it comes from (vendor, SoC file, --cpu-facts) and what the int8
GEMV derives from it (its prefetch instruction), so no CPU gets another CPU's prefetch kind by default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runtime_stubs.errors import LlamaAotError
from schedules.cpu.params import CPUParams
from targets import load_soc
from targets.cpu_facts import CPUFacts, parse_overrides
from targets.hostdetect import stream_prefetch_for_vendor
from targets.registry import SHIPPED_DIR
from targets.schema import parse_soc


@pytest.mark.parametrize("vendor,kind,confirmed", [("GenuineIntel", "t0", True), ("AuthenticAMD", "nta", True),
                                                   ("HygonGenuine", "t0", False), ("", "t0", False)])
def test_kind_per_vendor(vendor, kind, confirmed):
    fact = stream_prefetch_for_vendor(vendor)
    assert fact["value"] == kind and fact.get("confirmed", True) is confirmed


def test_host_fact_follows_this_cpus_vendor():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    m = re.search(r"^vendor_id\s*:\s*(.+)$", text, re.M)
    if not m:
        pytest.skip("no vendor_id in /proc/cpuinfo (not an x86 Linux host)")
    host = CPUFacts.host()
    assert host.stream_prefetch == stream_prefetch_for_vendor(m.group(1).strip())["value"]


@pytest.mark.parametrize("kind,locality,nbytes", [("nta", 0, 12288), ("t0", 3, 12288), ("none", 3, 0)])
def test_derived_locality_and_distance(kind, locality, nbytes):
    facts = CPUFacts(l1d_bytes=48 * 1024, stream_prefetch=kind, source="test")
    p = CPUParams.from_target({"kind": "llvm", "mcpu": "znver4"}, facts=facts)
    assert p.int8_gemv_prefetch_locality() == locality and p.int8_gemv_prefetch_bytes() == nbytes
    record = p.schedule_record()
    assert record["facts"]["stream_prefetch"] == kind
    assert record["derived"]["int8_gemv_prefetch_locality"] == locality
    pinned = CPUParams.from_target({"kind": "llvm", "mcpu": "znver4"}, facts=facts, int8_prefetch_locality=1)
    assert pinned.int8_gemv_prefetch_locality() == 1 and pinned.knobs() == {"int8_prefetch_locality": 1}


def test_cpu_facts_override():
    assert parse_overrides("l1d=32K,stream_prefetch=nta") == {"l1d_bytes": 32 * 1024, "stream_prefetch": "nta"}
    with pytest.raises(LlamaAotError, match="stream_prefetch must be one of nta, t0, none"):
        parse_overrides("stream_prefetch=t1")


def test_soc_file_fact_and_bad_value():
    import tomllib

    data = tomllib.loads((SHIPPED_DIR / "snapdragon-8-gen-3.toml").read_text())
    assert CPUFacts.from_soc(load_soc("snapdragon-8-gen-3")).stream_prefetch == "t0"  # not stated: t0
    data["cache"]["stream_prefetch"] = {"value": "nta", "source": "test"}
    assert parse_soc(data, "test").cache.stream_prefetch.value == "nta"
    data["cache"]["stream_prefetch"] = {"value": "t2", "source": "test"}
    with pytest.raises(LlamaAotError, match="unknown stream prefetch kind 't2'; use one of: nta, t0, none"):
        parse_soc(data, "test")
