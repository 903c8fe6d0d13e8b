"""CPU facts the schedules are derived from, and the tile sizes derived from them.

`CPUParams.from_target(target)` reads what the TVM target says (ISA features through LLVM, ``num-cores``)
and fills the cache sizes from the host when the target is the host, else from conservative per-arch
defaults. The SoC room can construct `CPUParams` directly (or `from_target(target, l2_bytes=...)`) from a
SoC description and pass it to `schedules.cpu_rules(target, params=...)`.

Why not `tvm.target.codegen.llvm_get_vector_width`: in TVM 0.27 it answers 512 for targets without AVX-512
(e.g. ``mcpu=haswell`` or a bare ``llvm``), so the vector width is taken from the LLVM feature list instead.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from tvm.target import Target

KiB = 1024
MiB = 1024 * 1024

# Conservative defaults when the target is not the host (per core L1d / L2, shared L3 or SLC).
_ARCH_DEFAULT_CACHES = {
    # Cortex-A720/X4 class: 64 KB L1d, 512 KB L2 (X4 up to 2 MB), a few MB of L3.
    "aarch64": (64 * KiB, 512 * KiB, 8 * MiB),
    "x86_64": (32 * KiB, 1 * MiB, 16 * MiB),
}


def _target_arch(target: Target) -> str:
    triple = str(target.attrs.get("mtriple", "") or "")
    if not triple:
        from tvm.target import codegen

        triple = codegen.llvm_get_system_triple()
    arch = triple.split("-")[0]
    if arch in ("arm64", "aarch64", "aarch64_be"):
        return "aarch64"
    if arch in ("x86_64", "amd64"):
        return "x86_64"
    return arch


def _is_host(target: Target) -> bool:
    from tvm.target import codegen

    triple = str(target.attrs.get("mtriple", "") or "")
    if triple and triple.split("-")[0] != codegen.llvm_get_system_triple().split("-")[0]:
        return False
    mcpu = str(target.attrs.get("mcpu", "") or "")
    return mcpu in ("", "native", codegen.llvm_get_system_cpu())


def _host_caches() -> tuple[int, int, int] | None:
    """(L1d, L2, L3) bytes of cpu0 from sysfs, None if unavailable."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    sizes = {}
    try:
        for entry in sorted(os.listdir(base)):
            if not entry.startswith("index"):
                continue
            with open(os.path.join(base, entry, "level")) as f:
                level = int(f.read())
            with open(os.path.join(base, entry, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip()
            mult = {"K": KiB, "M": MiB}.get(text[-1], 1)
            size = int(text.rstrip("KMB")) * mult
            if kind in ("Data", "Unified"):
                sizes[level] = size
    except (OSError, ValueError):
        return None
    if 1 not in sizes or 2 not in sizes:
        return None
    return sizes[1], sizes[2], sizes.get(3, sizes[2])


def _features(target: Target) -> set[str]:
    from tvm.target import codegen

    try:
        return set(str(f) for f in codegen.llvm_get_cpu_features(target))
    except Exception:  # pylint: disable=broad-except
        return set()


def software_prefetch_allowed(target: Target) -> bool:
    """Whether kernels for ``target`` may contain software prefetches: measured on x86 hosts only, and TVM
    0.27's AttachGlobalSymbol rejects any ``Evaluate(call void)`` in system-lib (cross, phone) builds."""
    return "mtriple" not in target.attrs


@dataclass(frozen=True)
class CPUParams:
    """Facts about one CPU (cluster) plus the derived tile knobs of the schedules."""

    arch: str = "x86_64"
    vector_bits: int = 128  # fixed-width SIMD register (NEON 128, AVX2 256, AVX-512 512)
    num_vector_regs: int = 16
    num_cores: int = 1  # threads the parallel loops are sized for
    l1d_bytes: int = 32 * KiB  # per core
    l2_bytes: int = 512 * KiB  # per core (or per core share of a cluster L2)
    l3_bytes: int = 8 * MiB  # shared last level
    has_fma: bool = True

    # --- knobs (None = derive) -------------------------------------------------------------
    gemv_rows: int | None = None  # output rows computed together in the GEMV inner loop
    gemv_lanes: int | None = None  # f32 lanes of one GEMV accumulator (logical vector)
    magic_convert: bool | None = None  # exact OR-based int4 -> float conversion (default: AVX-512 only)
    scale_cache: bool | None = None  # GEMV: convert each task's float16 scales to float32 once (default on)
    gemv_unroll: int | None = None
    gemv_accumulators: bool | None = None
    gemv_prefetch: bool | None = None  # GEMV: software-prefetch the next row group (default on)  # GEMV: a separate accumulator per unrolled K step  # K steps unrolled in the GEMV inner loop (shares group scales)
    gemm_rows: int | None = None  # S rows of the GEMM register tile
    gemm_cols: int | None = None  # N columns of the GEMM register tile
    gemm_panel_rows: int | None = None  # N rows of the dequantized weight panel per parallel task
    gemm_k_block: int | None = None  # K block of the broadcast-form GEMM

    # ---------------------------------------------------------------------------------------
    @classmethod
    def from_target(cls, target: Target | dict | None = None, **overrides) -> "CPUParams":
        if target is None:
            target = Target.current(allow_none=True) or Target({"kind": "llvm"})
        if isinstance(target, dict):
            target = Target(target)
        arch = _target_arch(target)
        feats = _features(target)
        if arch == "x86_64":
            if "avx512f" in feats:
                vbits, nregs = 512, 32
            elif "avx2" in feats or "avx" in feats:
                vbits, nregs = 256, 16
            else:
                vbits, nregs = 128, 16
            has_fma = "fma" in feats or "avx512f" in feats
        elif arch == "aarch64":
            vbits, nregs, has_fma = 128, 32, True
        else:
            vbits, nregs, has_fma = 128, 16, False
        cores = target.attrs.get("num-cores", None)
        host = _is_host(target)
        if cores is None or int(cores) <= 0:
            cores = os.cpu_count() if host else 4
        caches = _host_caches() if host else None
        if caches is None:
            caches = _ARCH_DEFAULT_CACHES.get(arch, (32 * KiB, 256 * KiB, 4 * MiB))
        params = cls(
            arch=arch,
            vector_bits=vbits,
            num_vector_regs=nregs,
            num_cores=int(cores),
            l1d_bytes=caches[0],
            l2_bytes=caches[1],
            l3_bytes=caches[2],
            has_fma=has_fma,
        )
        return dataclasses.replace(params, **overrides) if overrides else params

    # --- derived quantities -----------------------------------------------------------------
    def lanes(self, dtype_bits: int = 32) -> int:
        """Native SIMD lanes for an element type."""
        return max(1, self.vector_bits // dtype_bits)

    def gemv_vector_lanes(self) -> int:
        """f32 lanes of one GEMV accumulator. At least 16 so that one logical vector covers two packed
        int4 words (LLVM splits it into native registers on 128/256-bit machines)."""
        if self.gemv_lanes:
            return self.gemv_lanes
        return max(16, self.lanes(32))

    def exact_nibble_trick(self) -> bool:
        """Convert 4-bit fields to float with the exact 2**23 OR trick (rewrite.exact_nibble_to_float)? It
        saves an op where the mask and the OR fuse into one instruction (AVX-512 vpternlogd)."""
        if self.magic_convert is not None:
            return bool(self.magic_convert)
        return self.arch == "x86_64" and self.vector_bits >= 512

    def gemv_scale_cache(self) -> bool:
        """Convert a task's float16 group scales to float32 in one vectorized pass (L1-resident), so the
        inner loop broadcast-loads float32 scales instead of converting one per group and row."""
        return True if self.scale_cache is None else bool(self.scale_cache)

    def gemv_prefetch_enabled(self) -> bool:
        return True if self.gemv_prefetch is None else bool(self.gemv_prefetch)

    def gemv_split_accumulators(self) -> bool:
        return bool(self.gemv_accumulators)

    def gemv_k_unroll(self) -> int:
        """K vector steps per GEMV loop iteration: 2 x 16 lanes cover one 32-wide quantization group, so
        LLVM loads and converts each row's group scale once."""
        return self.gemv_unroll or max(1, 32 // self.gemv_vector_lanes())

    def gemv_row_tile(self) -> int:
        """Rows per inner GEMV step: each row holds one accumulator plus its unpack temporaries; x is
        shared. Four rows keep enough independent FMA chains in flight without spilling."""
        if self.gemv_rows:
            return self.gemv_rows
        regs_per_acc = max(1, self.gemv_vector_lanes() // self.lanes(32))
        # accumulators + about 3 temporaries per row + the x vector must fit the register file
        rows = 4
        while rows > 1 and rows * regs_per_acc * 3 + regs_per_acc > self.num_vector_regs:
            rows //= 2
        return rows

    def gemm_tile(self) -> tuple[int, int, int]:
        """(S rows, N cols, f32 lanes) of the GEMM register tile (dot-product form: each of the
        rows x cols accumulators is one vector over K). Kept under TVM's 1 KiB stack-allocation limit
        so the accumulator tile is a stack array that LLVM promotes to registers."""
        lanes = self.lanes(32)
        if self.gemm_rows and self.gemm_cols:
            return self.gemm_rows, self.gemm_cols, lanes
        budget = self.num_vector_regs - 2
        best = (1, 1)
        for cols in (4, 2, 1):  # powers of two: N is a multiple of them
            for rows in (4, 3, 2, 1):
                if rows * cols + rows + cols > budget:
                    continue
                if rows * cols * lanes * 4 >= 1024:
                    continue
                if rows * cols > best[0] * best[1]:
                    best = (rows, cols)
        return best[0], best[1], lanes

    def gemm_bcast_tile(self) -> tuple[int, int, int]:
        """(MR rows, NR vectors, f32 lanes) of the broadcast-form register tile: MR x NR accumulators, NR
        weight vectors and one broadcast x must fit the register file."""
        lanes = self.lanes(32)
        if self.gemm_rows and self.gemm_cols:
            return self.gemm_rows, self.gemm_cols, lanes
        regs = self.num_vector_regs
        best = (1, 1)
        for nrv in (4, 2, 1):  # NR a power of two times the lanes: N is a multiple of it
            for mr in range(8, 0, -1):
                if mr * nrv + nrv + 1 > regs - 1:
                    continue
                if mr * nrv > best[0] * best[1]:
                    best = (mr, nrv)
        return best[0], best[1], lanes

    def gemm_kc(self, k: int, nr: int) -> int:
        """K block: the [Kc, NR] weight micro-panel stays in about half of L1."""
        if self.gemm_k_block:
            cap = self.gemm_k_block
        else:
            cap = max(16, (self.l1d_bytes * 2 // 3) // (nr * 4))
        kc = 1
        for d in range(min(cap, k), 0, -1):
            if k % d == 0 and (d % 8 == 0 or d == k):
                kc = d
                break
        return kc

    def gemm_bcast_panel(self, kc: int, n: int, nr: int) -> int:
        """N width of the per-task [Kc, Tn] panel: about half of L2, at least 4 tasks per core."""
        if self.gemm_panel_rows:
            cap = self.gemm_panel_rows
        else:
            cap = max(nr, (self.l2_bytes // 2) // (kc * 4))
            cap = min(cap, max(nr, n // max(1, 4 * self.num_cores)))
        tn = nr
        for d in range(nr, min(cap, n) + 1, nr):
            if n % d == 0:
                tn = d
        return tn

    def gemm_panel(self, k: int, n: int, bytes_per_elem: int = 4) -> int:
        """N rows of the dequantized weight panel [rows, K] kept per parallel task: the panel is
        re-read once per S tile, so it should sit in about half of the per-core L2; and there should
        be at least 4 tasks per core for balance."""
        if self.gemm_panel_rows:
            return self.gemm_panel_rows
        _, cols, _ = self.gemm_tile()
        rows = max(cols, (self.l2_bytes // 2) // max(1, k * bytes_per_elem))
        rows = min(rows, 64, max(cols, n // max(1, 4 * self.num_cores)))
        rows = max(cols, rows - rows % cols)
        return rows
