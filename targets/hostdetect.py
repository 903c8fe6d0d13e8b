"""Facts about the machine we run on, detected at run time, in the SoC file layout.

``targets/socs/host.toml`` has ``detect = "host"``: the registry merges what this module finds
(CPU name from LLVM, core count, caches from sysfs or lscpu, RAM from /proc/meminfo) under the
file's own keys, so the file may pin any fact (e.g. a measured bandwidth) and the rest is detected.
The host has no GPU entry: ``--target host`` compiles for the CPU only.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
from pathlib import Path

_SYS_CPU0 = Path("/sys/devices/system/cpu/cpu0")


def _fact(value, source: str, confirmed: bool = True, note: str = "") -> dict:
    d = {"value": value, "source": source}
    if not confirmed:
        d["confirmed"] = False
        d["note"] = note
    return d


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _parse_size(text: str) -> int | None:
    """'48K' / '32768K' / '1 MiB' / '2097152' -> bytes."""
    m = re.match(r"^\s*([0-9.]+)\s*([KMG]?)(?:i?B)?\s*$", text, re.IGNORECASE)
    if not m:
        return None
    scale = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


def _cpu_list_len(text: str) -> int:
    n = 0
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            n += int(b) - int(a) + 1
        else:
            n += 1
    return max(n, 1)


def _caches_sysfs() -> dict | None:
    base = _SYS_CPU0 / "cache"
    if not base.is_dir():
        return None
    found: dict[str, tuple[int, int, int, int]] = {}  # key -> (bytes, line, shared cores, ways)
    for idx in sorted(base.glob("index*")):
        level, ctype = _read(idx / "level"), _read(idx / "type")
        size = _parse_size(_read(idx / "size") or "")
        if level is None or ctype is None or size is None:
            continue
        line = int(_read(idx / "coherency_line_size") or 0)
        shared = _cpu_list_len(_read(idx / "shared_cpu_list") or "0")
        ways_text = _read(idx / "ways_of_associativity") or "0"
        ways = int(ways_text) if ways_text.isdigit() else 0
        if level == "1" and ctype == "Data":
            found["l1d"] = (size, line, shared, ways)
        elif level in ("2", "3") and ctype in ("Unified", "Data"):
            found[f"l{level}"] = (size, line, shared, ways)
    return found or None


def _caches_lscpu() -> dict | None:
    try:
        out = subprocess.run(
            ["lscpu", "--caches=NAME,ONE-SIZE,COHERENCY-SIZE", "--bytes"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found: dict[str, tuple[int, int, int, int]] = {}
    for row in out.splitlines()[1:]:
        cols = row.split()
        if len(cols) < 3 or not cols[1].isdigit():
            continue
        name, size, line = cols[0].upper(), int(cols[1]), int(cols[2]) if cols[2].isdigit() else 0
        key = {"L1D": "l1d", "L2": "l2", "L3": "l3"}.get(name)
        if key:
            found[key] = (size, line, 1, 0)
    return found or None


def _cache_section() -> dict:
    caches, src = _caches_sysfs(), "detected: /sys/devices/system/cpu/cpu0/cache"
    if caches is None:
        caches, src = _caches_lscpu(), "detected: lscpu --caches"
    if not caches:
        caches, src = {}, ""
    missing = "not detectable here (no sysfs cache info, no lscpu); typical value for a desktop core"

    def kib(key: str, default_kib: int) -> dict:
        if key in caches:
            return _fact(caches[key][0] // 1024, src)
        if default_kib == 0:
            return _fact(0, src or "not detected", False, f"no {key.upper()} cache reported")
        return _fact(default_kib, "estimate", False, missing)

    line = next((c[1] for c in caches.values() if c[1] > 0), 0)
    shared = caches.get("l2", (0, 0, 1, 0))[2]
    ways = {f"{k}_ways": _fact(c[3], src) for k, c in caches.items() if c[3] > 0}
    return {
        **ways,
        "stream_prefetch": stream_prefetch_for_vendor(_vendor_id()),
        "line_bytes": _fact(line, src) if line else _fact(64, "estimate", False, missing),
        "l1d_kib": kib("l1d", 32),
        "l2_kib": kib("l2", 1024),
        "l2_shared_cores": _fact(shared, src) if "l2" in caches else _fact(1, "estimate", False, missing),
        "l3_kib": kib("l3", 0),
        "slc_kib": _fact(0, "host CPUs have no separate system-level cache entry", False,
                         "not detected; a host's last-level cache is reported as L3"),
    }


def _max_ghz() -> dict:
    khz = _read(_SYS_CPU0 / "cpufreq" / "cpuinfo_max_freq")
    if khz and khz.isdigit():
        return _fact(round(int(khz) / 1e6, 3), "detected: cpufreq cpuinfo_max_freq")
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"^CPU max MHz:\s*([0-9.]+)", out, re.MULTILINE)
        if m:
            return _fact(round(float(m.group(1)) / 1000, 3), "detected: lscpu CPU max MHz")
    except (OSError, subprocess.SubprocessError):
        pass
    cpuinfo = _read(Path("/proc/cpuinfo")) or ""
    m = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.MULTILINE)
    if m:
        return _fact(round(float(m.group(1)) / 1000, 3), "detected: /proc/cpuinfo cpu MHz", False,
                     "current clock, not the maximum (no cpufreq here, e.g. a VM)")
    return _fact(1.0, "not detected", False, "clock not detectable here; placeholder only")


def _model_name(default: str) -> str:
    cpuinfo = _read(Path("/proc/cpuinfo")) or ""
    m = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return m.group(1).strip() if m else default


def _vendor_id() -> str:
    cpuinfo = _read(Path("/proc/cpuinfo")) or ""
    m = re.search(r"^(?:vendor_id|CPU implementer)\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return m.group(1).strip() if m else (platform.processor() or "")


def _cpu_vendor() -> str:
    return f"{_vendor_id() or 'unknown'} ({platform.machine() or 'unknown arch'})"


def stream_prefetch_for_vendor(vendor_id: str) -> dict:
    """How software prefetch should bring in a read-once stream on this vendor's x86 cores, as a fact.

    Why it depends on the vendor: what ``prefetchnta`` does is a microarchitecture fact, not a cache size.
    * Intel: NTA-prefetched lines go into L1d only, not into L2 (nor into the non-inclusive L3 of Xeon
      Scalable parts), so the lines one core has in flight are bounded by its L1d fill buffers (~16) instead
      of the L2's queue, and the stream runs at fill buffers x 64 B / DRAM latency. Measured on Emerald
      Rapids (bench.bandwidth, 2 threads): nta 14.1 GB/s, t0 35.6, hardware prefetch only 34.6; the q4 GEMV
      streamed 15 GB/s with nta and 25 GB/s with t0.
    * AMD Zen: the NTA prefetch keeps the stream out of the outer caches without that bound: measured on
      Zen 5, the GEMV streamed 52 GB/s with nta against 43 with t0 (schedules/cpu/int8_gemv.py).
    * Anything else: t0, which was never far from the best kind on any CPU measured (nta can be 2.5x slower).
    ``llama-aot tune`` measures the kinds on the machine itself (knob ``int8_prefetch_locality``), and
    ``llama-aot bench`` prints which kind its bandwidth probe found fastest."""
    if vendor_id == "GenuineIntel":
        return _fact("t0", "derived: vendor_id GenuineIntel (NTA prefetch fills L1d only; see hostdetect)")
    if vendor_id == "AuthenticAMD":
        return _fact("nta", "derived: vendor_id AuthenticAMD (NTA prefetch measured fastest on Zen 5)")
    return _fact("t0", f"default for vendor {vendor_id or 'unknown'}", False, "not measured for this vendor; run llama-aot tune")


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read(Path("/proc/meminfo")) or "").splitlines():
        m = re.match(r"^(\w+):\s+(\d+)\s*kB", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * 1024
    return out


def _os_name() -> str:
    return {"Darwin": "macos", "Windows": "windows"}.get(platform.system(), "linux")


@functools.lru_cache(maxsize=1)
def detect_host() -> dict:
    """The host's facts as a SoC-file dict (without ``name``/``display_name``/``detect``)."""
    from tvm.target import codegen  # imported late: the rest of the registry does not need TVM

    cpu = codegen.llvm_get_system_cpu()
    triple = codegen.llvm_get_system_triple()
    n = os.cpu_count() or 1
    mem = _meminfo()
    total = mem.get("MemTotal", 0) / 1e9
    avail = mem.get("MemAvailable", 0) / 1e9
    if total > 0:
        ram = _fact(round(total, 2), "detected: /proc/meminfo MemTotal")
        usable = _fact(round(min(avail or total, total), 2), "detected: /proc/meminfo MemAvailable at load time")
    else:
        ram = _fact(8.0, "not detected", False, "no /proc/meminfo; placeholder")
        usable = _fact(4.0, "not detected", False, "no /proc/meminfo; placeholder")
    ghz = _max_ghz()
    cluster_note = {} if ghz.get("confirmed", True) else {"confirmed": False, "note": ghz["note"]}
    return {
        "vendor": _cpu_vendor(),
        "os": _os_name(),
        "cpu": {
            "clusters": [
                {
                    "core": _model_name(cpu),
                    "mcpu": cpu,
                    "count": n,
                    "max_ghz": ghz["value"],
                    "role": "performance",
                    "source": f"detected: os.cpu_count(), LLVM host CPU; clock {ghz['source']}",
                    **cluster_note,
                }
            ],
            "mtriple": _fact(triple, "detected: tvm.target.codegen.llvm_get_system_triple()"),
            "mcpu": _fact(cpu, "detected: tvm.target.codegen.llvm_get_system_cpu()"),
            "mattr": _fact([], "native mcpu: LLVM enables every feature of the detected CPU"),
        },
        "cache": _cache_section(),
        "memory": {
            "dram_type": _fact("unknown", "not detectable from user space", False,
                               "DRAM type is not exposed to unprivileged processes"),
            "ram_gb": ram,
            "usable_app_memory_gb": usable,
        },
    }


def merge(detected: dict, file_data: dict) -> dict:
    """``file_data`` over ``detected``, recursively for tables (a fact table replaces as a whole)."""
    out = dict(detected)
    for k, v in file_data.items():
        if (
            isinstance(v, dict)
            and isinstance(out.get(k), dict)
            and "value" not in v
            and "value" not in out[k]
        ):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out
