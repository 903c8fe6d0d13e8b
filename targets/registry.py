"""The SoC registry: load SoC data files and derive TVM targets from them.

Where SoC files come from, first match wins:

1. a path to a ``.toml`` file given instead of a name;
2. each directory in ``$LLAMA_AOT_SOC_PATH`` (``os.pathsep``-separated), in order, so a user file
   can add a SoC or replace a shipped one without editing code;
3. the files shipped in ``targets/socs/``.

A file ``<name>.toml`` (in a directory or given by path) must say ``name = "<name>"``.  ``host`` is special: its file has
``detect = "host"`` and the facts are detected on this machine at load time (see hostdetect.py).
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runtime_stubs.errors import LlamaAotError

from . import hostdetect
from .schema import (
    GPU_APIS,
    CacheSpec,
    CpuCluster,
    CpuSpec,
    Fact,
    GpuSpec,
    MemorySpec,
    ParsedSoc,
    parse_soc,
)

SHIPPED_DIR = Path(__file__).resolve().parent / "socs"
ENV_VAR = "LLAMA_AOT_SOC_PATH"

# TVM's own OpenCL/Vulkan kinds and the qcom/adreno-* tags use 256 threads per block: mobile GPU
# drivers lower the per-kernel limit (CL_KERNEL_WORK_GROUP_SIZE) when a kernel uses many registers,
# so a schedule sized for the device maximum (often 1024) can fail to launch.
_MOBILE_THREADS_CAP = 256


@dataclass(frozen=True)
class SocSpec:
    """One SoC: the validated facts plus what llama-aot derives from them."""

    name: str
    display_name: str
    vendor: str
    os: str
    devices: str
    path: str  # the file it was loaded from
    is_host: bool
    cpu: CpuSpec
    cache: CacheSpec
    gpu: GpuSpec | None
    memory: MemorySpec

    # -- CPU ------------------------------------------------------------------------------------

    @property
    def num_threads(self) -> int:
        """Cores TVM's thread pool should use: every core whose cluster role is not efficiency.

        TVM splits a parallel loop into equal chunks, so one slow little core delays the whole
        loop; prime + performance cores only (e.g. 6 of 8 on Snapdragon 8 Gen 3, 2 of 6 on A17 Pro).
        """
        return sum(c.count for c in self.cpu.clusters if c.role != "efficiency")

    def tvm_host_target(self) -> dict:
        """LLVM target dict for the CPU: mtriple, mcpu, mattr and num-cores (see num_threads)."""
        if self.is_host:
            from .host import host_target_dict

            # the detected CPU, or the one a host file pins (e.g. mcpu "haswell": this machine as an AVX2-only CPU,
            # with its own caches); no mtriple, so it stays a host build (a shared library, prefetches allowed)
            target = host_target_dict(self.num_threads)
            target["mcpu"] = self.cpu.mcpu.value
            if self.cpu.mattr.value:
                target["mattr"] = list(self.cpu.mattr.value)
            return target
        target = {
            "kind": "llvm",
            "mtriple": self.cpu.mtriple.value,
            "mcpu": self.cpu.mcpu.value,
            "num-cores": self.num_threads,
        }
        if self.cpu.mattr.value:
            target["mattr"] = list(self.cpu.mattr.value)
        return target

    # -- GPU ------------------------------------------------------------------------------------

    @property
    def gpu_apis(self) -> tuple[str, ...]:
        """GPU APIs an app can use on this SoC, preferred first; () when there is no GPU entry."""
        return self.gpu.apis.value if self.gpu else ()

    def tvm_device_target(self, api: str | None = None) -> dict | None:
        """TVM target dict for the GPU through ``api`` (default: the preferred one), with the CPU as
        ``host``; None when the SoC has no GPU entry or its GPU does not offer ``api``.

        Choices (documented in docs/socs.md): ``thread_warp_size`` is the SIMD-group width on Metal
        (TVM lowers warp reductions to simd_shuffle there) and 1 on OpenCL/Vulkan (TVM emits no
        subgroup operations for them; its Vulkan runtime also reports 1); threads per block are
        capped at 256 on OpenCL/Vulkan as in TVM's own tags; no ``adreno`` key is added because
        that switches Relax to its texture/CLML pipeline.
        """
        if api is not None and api not in GPU_APIS:
            raise LlamaAotError(
                f"unknown GPU API '{api}'; use one of: {', '.join(GPU_APIS)}"
            )
        if self.gpu is None:
            return None
        if api is None:
            api = self.gpu_apis[0]
        if api not in self.gpu_apis:
            return None
        g = self.gpu
        hw_max = g.max_workgroup_size.value
        capped = min(hw_max, _MOBILE_THREADS_CAP)
        smem = g.shared_memory_bytes.value
        host = self.tvm_host_target()
        if api == "opencl":
            return {
                "kind": "opencl",
                "max_num_threads": capped,
                "max_threads_per_block": capped,
                "max_shared_memory_per_block": smem,
                "thread_warp_size": 1,
                "host": host,
            }
        if api == "metal":
            return {
                "kind": "metal",
                "max_num_threads": capped,
                "max_threads_per_block": hw_max,
                "max_shared_memory_per_block": smem,
                "thread_warp_size": min(g.subgroup_sizes.value),
                "max_function_args": 31,
                "host": host,
            }
        # vulkan
        major, minor = (int(x) for x in g.vulkan_version.value.split("."))
        api_version = (major << 22) | (minor << 12)
        spirv = 0x10500 if (major, minor) >= (1, 2) else 0x10300
        return {
            "kind": "vulkan",
            "max_num_threads": capped,
            "max_threads_per_block": capped,
            "max_shared_memory_per_block": smem,
            "thread_warp_size": 1,
            "vulkan_api_version": api_version,
            "max_spirv_version": spirv,
            "supports_float16": g.fp16.value,
            "supports_16bit_buffer": g.vulkan_storage_16bit.value,
            "supports_int8": g.vulkan_storage_8bit.value,
            "supports_8bit_buffer": g.vulkan_storage_8bit.value,
            "supports_integer_dot_product": g.int8_dot.value,
            "supports_storage_buffer_storage_class": (major, minor) >= (1, 1),
            # shaderInt64: reported by every Vulkan 1.1+ Adreno 6xx/7xx/8xx, Mali Valhall/5th-gen and
            # Xclipse (AMD RDNA) driver in the gpuinfo.org database; TVM's paged KV cache kernels
            # index pages with int64, so the model needs it.
            "supports_int64": True,
            "host": host,
        }

    # -- memory ---------------------------------------------------------------------------------

    @property
    def peak_bandwidth_bytes_per_s(self) -> float:
        return self.memory.peak_bandwidth_gbs.value * 1e9

    @property
    def usable_memory_bytes(self) -> int:
        """Memory an app can typically use (GB = 1e9 bytes), from ``memory.usable_app_memory_gb``."""
        return int(self.memory.usable_app_memory_gb.value * 1e9)

    def decode_ceiling_tokens_per_s(self, weight_bytes_per_token: float) -> float:
        """Upper bound on batch-1 decode speed: peak DRAM bandwidth / bytes of weights read per token."""
        if not isinstance(weight_bytes_per_token, (int, float)) or isinstance(
            weight_bytes_per_token, bool
        ) or not weight_bytes_per_token > 0:
            raise LlamaAotError(
                f"weight bytes per token must be a positive number, got {weight_bytes_per_token!r}"
            )
        return self.peak_bandwidth_bytes_per_s / float(weight_bytes_per_token)

    def cache_params(self) -> dict:
        """Cache sizes in bytes for schedules, as seen by one core of the ``cpu.mcpu`` type.

        Keys: ``l1d_bytes``, ``l2_bytes`` (the whole L2 the core sits behind),
        ``l2_shared_cores`` (cores sharing that L2; 1 = private), ``l3_bytes`` (0 = none),
        ``slc_bytes`` (0 = none or counted in L3), ``line_bytes``.
        """
        c = self.cache
        return {
            "l1d_bytes": c.l1d_kib.value * 1024,
            "l2_bytes": c.l2_kib.value * 1024,
            "l2_shared_cores": c.l2_shared_cores.value,
            "l3_bytes": c.l3_kib.value * 1024,
            "slc_bytes": c.slc_kib.value * 1024,
            "line_bytes": c.line_bytes.value,
        }

    def unconfirmed_facts(self) -> list[str]:
        """Dotted keys of every fact marked ``confirmed = false``."""
        return [key for key, fact in iter_facts(self) if not fact.confirmed]


_SECTIONS = ("cpu", "cache", "gpu", "memory")


def iter_facts(soc: SocSpec) -> Iterator[tuple[str, Fact | CpuCluster]]:
    """(dotted key, fact) for every sourced fact of ``soc``, in file order; clusters included."""
    for section in _SECTIONS:
        obj = getattr(soc, section)
        if obj is None:
            continue
        for field in obj.__dataclass_fields__:
            v = getattr(obj, field)
            if isinstance(v, Fact):
                yield f"{section}.{field}", v
            elif field == "clusters":
                for i, c in enumerate(v):
                    yield f"cpu.clusters[{i}]", c


# ----------------------------------------------------------------------------------------------
# loading


def _search_dirs() -> list[Path]:
    dirs = [Path(p).expanduser() for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    return dirs + [SHIPPED_DIR]


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise LlamaAotError(f"{path}: invalid TOML ({e}); fix the syntax") from None
    except UnicodeDecodeError as e:
        raise LlamaAotError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    except RecursionError:
        raise LlamaAotError(f"{path}: invalid TOML (arrays or tables nested too deeply); fix the syntax") from None
    except OSError as e:
        raise LlamaAotError(f"{path}: cannot read ({e.strerror}); check the path") from None


def _from_parsed(p: ParsedSoc, path: Path) -> SocSpec:
    return SocSpec(
        name=p.name,
        display_name=p.display_name,
        vendor=p.vendor,
        os=p.os,
        devices=p.devices,
        path=str(path),
        is_host=p.detect == "host",
        cpu=p.cpu,
        cache=p.cache,
        gpu=p.gpu,
        memory=p.memory,
    )


def _load_file(path: Path) -> SocSpec:
    data = _read_toml(path)
    if data.get("detect") == "host":
        data = hostdetect.merge(hostdetect.detect_host(), data)
    return _from_parsed(parse_soc(data, str(path), expected_name=path.stem), path)


def _looks_like_path(s: str) -> bool:
    return s.endswith(".toml") or os.sep in s or (os.altsep is not None and os.altsep in s)


def _known_files() -> dict[str, Path]:
    """name -> file, with LLAMA_AOT_SOC_PATH directories taking precedence over shipped files."""
    found: dict[str, Path] = {}
    for d in _search_dirs():
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.toml")):
            found.setdefault(f.stem, f)
    return found


def load_soc(name_or_path: str | os.PathLike) -> SocSpec:
    """Load a SoC by registry name (``snapdragon-8-gen-3``, ``host``) or by path to a .toml file."""
    s = os.fspath(name_or_path)
    if isinstance(name_or_path, Path) or _looks_like_path(s):
        path = Path(s).expanduser()
        if not path.is_file():
            raise LlamaAotError(f"SoC file {path} does not exist; check the path")
        return _load_file(path)
    known = _known_files()
    if s in known:
        return _load_file(known[s])
    close = difflib.get_close_matches(s, list(known), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise LlamaAotError(
        f"unknown SoC '{s}'; {hint}run `llama-aot targets` to list them, or pass a path to a "
        f".toml file (or add its directory to ${ENV_VAR})"
    )


def list_socs() -> list[SocSpec]:
    """Every known SoC (user directories first, then shipped), sorted by name; host last."""
    socs = [_load_file(path) for path in _known_files().values()]
    return sorted(socs, key=lambda s: (s.is_host, s.name))
