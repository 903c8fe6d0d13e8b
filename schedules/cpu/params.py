"""CPU facts the schedules are derived from, and the tile sizes derived from them.

``CPUParams.from_target(target, facts=None, **knobs)``: instruction-set facts (vector width, registers) come
from the TVM target through LLVM's feature list; memory facts (``targets.cpu_facts.CPUFacts``: cache sizes
and ways, line size, cores) from the SoC file (``--soc``), this machine (any target of the host's
architecture, e.g. ``-mcpu=haswell`` compiled here) or, logged, per-architecture defaults. Every knob
defaults to a function of those facts, written next to it (``derivations()`` lists them; the package records
them in ``llama-aot.json`` and ``llama-aot targets X --schedules`` prints them); a knob passed explicitly
(an experiment, a tuning record) overrides the derivation and never changes what a kernel computes.

Why not `tvm.target.codegen.llvm_get_vector_width`: in TVM 0.27 it answers 512 for targets without AVX-512
(e.g. ``mcpu=haswell`` or a bare ``llvm``), so the vector width is taken from the LLVM feature list instead.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

from tvm.target import Target

from targets.cpu_facts import CPUFacts, facts_for

KiB = 1024
MiB = 1024 * 1024
FMA_LATENCY_X_PORTS = 8  # independent FMA chains a core needs: 4-cycle latency x 2 pipes (Zen, Cortex-X/A7xx)


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


def _host_arch() -> str:
    from tvm.target import codegen

    return _target_arch(Target({"kind": "llvm", "mtriple": codegen.llvm_get_system_triple()}))


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
    """Facts about one CPU (cluster) plus the knobs of the schedules (None = derived from the facts)."""

    arch: str = "x86_64"
    vector_bits: int = 128  # fixed-width SIMD register (NEON 128, AVX2 256, AVX-512 512)
    num_vector_regs: int = 16
    num_cores: int = 1  # threads the parallel loops are sized for
    l1d_bytes: int = 32 * KiB  # per core
    l2_bytes: int = 512 * KiB  # per core (or per core share of a cluster L2)
    l3_bytes: int = 8 * MiB  # shared last level
    l1d_ways: int = 8
    l2_ways: int = 8
    line_bytes: int = 64
    stream_prefetch: str = "t0"  # software prefetch kind for a read-once stream (targets/schema.py)
    has_fma: bool = True
    facts_source: str = "default"  # where the memory facts came from (targets.cpu_facts)

    # --- knobs (None = derive) -------------------------------------------------------------
    gemv_rows: int | None = None  # output rows computed together in the GEMV inner loop
    gemv_lanes: int | None = None  # f32 lanes of one GEMV accumulator (logical vector)
    magic_convert: bool | None = None  # exact OR-based int4 -> float conversion (default: AVX-512 only)
    scale_cache: bool | None = None  # GEMV: convert each task's float16 scales to float32 once (default on)
    gemv_unroll: int | None = None  # K steps unrolled in the GEMV inner loop (shares group scales)
    gemv_accumulators: bool | None = None  # GEMV: a separate accumulator per unrolled K step
    gemv_prefetch: bool | None = None  # GEMV: software-prefetch the next row group (default on)
    gemm_rows: int | None = None  # S rows of the GEMM register tile
    gemm_cols: int | None = None  # N columns of the GEMM register tile
    gemm_panel_rows: int | None = None  # N rows of the dequantized weight panel per parallel task
    gemm_k_block: int | None = None  # K block of the broadcast-form GEMM
    int8_prefetch_bytes: int | None = None  # int8 GEMV: software prefetch distance in weight bytes (0 = off)
    int8_prefetch_locality: int | None = None  # int8 GEMV: prefetch locality, 0 = prefetchnta .. 3 = prefetcht0
    int8_gemm_mr: int | None = None  # int8 GEMM: activation rows of the register tile
    int8_gemm_nrv: int | None = None  # int8 GEMM: dot-product vectors (columns) of the register tile
    int8_gemm_nt: int | None = None  # int8 GEMM: weight columns per parallel task (panel width)
    sparse_splits: int | None = None  # activation-sparse GEMV: parallel ranges of K
    sparse_prefetch_quads: int | None = None  # activation-sparse GEMV: quads of active rows prefetched ahead (0 = off)
    attn_query_vectors: int | None = None  # prefill attention: query vectors (rows x group heads) per tile
    attn_decode_tile_pages: int | None = None  # decode attention: KV pages per online-softmax step
    attn_decode_splits: int | None = None  # decode attention: context splits per KV head (flash-decoding)
    attn_decode_prefetch_pages: int | None = None  # decode attention: pages ahead prefetched (0 = off)
    attn_decode_heads_per_block: int | None = None  # decode attention: query heads accumulated in registers
    attn_decode_keys_per_reduction: int | None = None  # decode attention: keys whose dot products are summed together

    # ---------------------------------------------------------------------------------------
    @classmethod
    def from_target(cls, target: Target | dict | None = None, facts: CPUFacts | None = None, **overrides) -> "CPUParams":
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
        if facts is None:
            facts = facts_for(arch, arch == _host_arch())
        cores = target.attrs.get("num-cores", None)
        if cores is None or int(cores) <= 0:
            cores = facts.num_cores or os.cpu_count() or 1
        params = cls(
            arch=arch,
            vector_bits=vbits,
            num_vector_regs=nregs,
            num_cores=int(cores),
            l1d_bytes=facts.l1d_bytes,
            l2_bytes=facts.l2_bytes,
            l3_bytes=facts.l3_bytes,
            l1d_ways=facts.l1d_ways,
            l2_ways=facts.l2_ways,
            line_bytes=facts.line_bytes,
            stream_prefetch=facts.stream_prefetch,
            has_fma=has_fma,
            facts_source=facts.source,
        )
        return dataclasses.replace(params, **overrides) if overrides else params

    @classmethod
    def for_build(cls, target: Target | dict, facts: CPUFacts | None = None) -> "CPUParams":
        """What ``llama-aot compile`` uses: derived from ``facts`` (None: this machine's for a target of its
        architecture), the software prefetch off where it cannot be emitted (system-lib builds)."""
        if isinstance(target, dict):
            target = Target(target)
        if software_prefetch_allowed(target):
            return cls.from_target(target, facts=facts)  # the rules' defaults (prefetch on)
        return cls.from_target(target, facts=facts, gemv_prefetch=False, attn_decode_prefetch_pages=0)

    @classmethod
    def parse_knobs(cls, text: str) -> dict:
        """``"attn_decode_splits=2,gemv_prefetch=0"`` -> knob overrides (``llama-aot compile --schedule-knobs``),
        for experiments and for pinning a schedule by hand; every name must be a knob of this class."""
        from runtime_stubs.errors import LlamaAotError  # pylint: disable=import-outside-toplevel

        kinds = {f.name: f.type for f in dataclasses.fields(cls) if f.default is None}
        out = {}
        for item in filter(None, (t.strip() for t in text.split(","))):
            key, _, value = item.partition("=")
            key, value = key.strip(), value.strip().lower()
            if key not in kinds or not value:
                raise LlamaAotError(f"--schedule-knobs: cannot read {item!r}; use KEY=VALUE with KEY one of {', '.join(sorted(kinds))}")
            if "bool" in str(kinds[key]):
                if value not in ("0", "1", "true", "false"):
                    raise LlamaAotError(f"--schedule-knobs: {key} takes 0 or 1, got {value!r}")
                out[key] = value in ("1", "true")
            else:
                if not value.isdigit():
                    raise LlamaAotError(f"--schedule-knobs: {key} takes a non-negative integer, got {value!r}")
                out[key] = int(value)
        return out

    def knobs(self) -> dict:
        """The knobs set explicitly (not derived)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.default is None and getattr(self, f.name) is not None
        }

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

    def gemm_bcast_tiles(self) -> list[tuple[int, int]]:
        """(MR rows, NR vectors) register tiles of the broadcast form, best first: MR x NR accumulators, NR
        weight vectors, one broadcast x and one spare must fit the register file, and there must be at least
        FMA latency x FMA pipes independent accumulators (BLIS: mr * nr / lanes >= L * N_fma). Best = most
        accumulators (fewest loads per FMA), then the widest NR (longer contiguous panel rows)."""
        if self.gemm_rows and self.gemm_cols:
            return [(self.gemm_rows, self.gemm_cols)]
        regs = self.num_vector_regs
        tiles = []
        for nrv in (4, 2, 1):  # NR a power of two times the lanes: N is a multiple of it
            for mr in range(8, 0, -1):
                if mr * nrv + nrv + 1 <= regs - 1 and mr * nrv >= min(FMA_LATENCY_X_PORTS, regs // 2):
                    tiles.append((mr, nrv))
                    break  # the largest MR for this NR
        return sorted(tiles, key=lambda t: (-t[0] * t[1], -t[1])) or [(1, 1)]

    def gemm_bcast_tile(self) -> tuple[int, int, int]:
        """(MR rows, NR vectors, f32 lanes) of the preferred broadcast-form tile (before the L1 check of
        ``gemm_bcast_blocking``)."""
        mr, nrv = self.gemm_bcast_tiles()[0]
        return mr, nrv, self.lanes(32)

    def gemm_l1_panel_budget(self) -> int:
        """Bytes of L1d the [Kc, NR] weight micro-panel may take: all ways but two (BLIS, Low et al. 2016:
        the micro-panel of B stays in L1 while the x rows stream through one way and the stores of the
        panel fill / epilogue through another), at least half of L1."""
        ways = max(2, self.l1d_ways)
        return self.l1d_bytes * max(ways // 2, ways - 2) // ways

    def gemm_kc(self, k: int, nr: int, granularity: int = 8) -> int | None:
        """K block: the largest divisor of K, a multiple of ``granularity`` (the k-values one packed panel
        gather produces: 8 for sequential q4, 128 for planar q4), whose [Kc, NR] f32 micro-panel fits
        ``gemm_l1_panel_budget`` (counted in cache lines). None when even one granule does not fit (the caller
        takes a narrower NR)."""
        # one k of the micro-panel occupies whole lines: NR floats, or a full line when they are fewer (a
        # 16-float row of a 128-byte-line L1d costs the line; cachegrind: Kc 1024 -> 512 halves D1 misses)
        cap = self.gemm_k_block or self.gemm_l1_panel_budget() // max(nr * 4, self.line_bytes)
        step = granularity if granularity % 8 == 0 else granularity * 8
        for d in range(min(cap, k) // step * step, 0, -step):
            if k % d == 0:
                return d
        return k if k <= cap and k % granularity == 0 else None

    def gemm_bcast_blocking(self, k: int, n: int, granularity: int = 8):
        """(MR, NR vectors, lanes, Kc, Tn) of the broadcast form for a [K, N] weight: the best register tile
        whose NR divides N and whose micro-panel fits L1 with a Kc of whole panel granules; None if none
        does (a 32 KiB L1d with 64-wide AVX-512 NR and planar q4's 128-k granule needs NR = 32)."""
        lanes = self.lanes(32)
        for mr, nrv in self.gemm_bcast_tiles():
            nr = nrv * lanes
            if n % nr:
                continue
            kc = self.gemm_kc(k, nr, granularity)
            if kc is not None:
                return mr, nrv, lanes, kc, self.gemm_bcast_panel(kc, n, nr)
        return None

    def gemm_bcast_panel(self, kc: int, n: int, nr: int) -> int:
        """N width of the per-task [Kc, Tn] panel: about half of the per-core L2 (the panel is written once
        and re-read per row tile; the other half holds the padded x tile and the outputs), and at least 4
        tasks per core so TVM's static split balances."""
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

    # --- int8-activation kernels (int8_gemv.py, int8_gemm.py) --------------------------------
    def int8_gemv_prefetch_bytes(self) -> int:
        """Distance of the int8 GEMV's weight prefetch: a quarter of L1d. Each thread streams one row at a
        time, so the lines in flight are one contiguous window; a quarter of L1d leaves the rest for the
        int8 activation row (K bytes + scales, reused by every row) and the lines being consumed. It is far
        above latency x per-core bandwidth (~100 ns x 25 GB/s = 2.5 KB) on every core in the registry.
        Zen 5 (48 KiB L1d): 12 KiB, what was measured best there (8-16 KiB). 0 = no software prefetch."""
        if self.int8_prefetch_bytes is not None:
            return self.int8_prefetch_bytes
        if self.gemv_prefetch is False or self.stream_prefetch == "none":
            return 0
        return self.l1d_bytes // 4

    def int8_gemv_prefetch_locality(self) -> int:
        """Locality of the int8 GEMV's weight prefetch (LLVM's: 0 = x86 prefetchnta, 3 = prefetcht0), from the
        facts' ``stream_prefetch`` kind (targets/hostdetect.py stream_prefetch_for_vendor says why it is a
        fact of the core, not of its cache sizes): on Emerald Rapids the non-temporal kind streamed at 40%
        of the bandwidth, on Zen 5 it was the fastest."""
        if self.int8_prefetch_locality is not None:
            return self.int8_prefetch_locality
        return 0 if self.stream_prefetch == "nta" else 3

    # --- activation-sparse GEMV (sparse_gemv.py) ------------------------------------------------
    def sparse_gemv_splits(self) -> int:
        """Parallel ranges of K of the sparse GEMV: one per core, each streaming whole rows (sparse_gemv.py says
        why K and not N is split)."""
        return self.sparse_splits if self.sparse_splits is not None else self.num_cores

    def sparse_gemv_prefetch_quads(self, n: int) -> int:
        """How many quads of active rows ahead the sparse GEMV prefetches: a quarter of L1d in flight, as the
        int8 GEMV (int8_gemv_prefetch_bytes), over the 4 x N / 2 bytes one quad reads, at least one; 0 where
        the facts say no software prefetch."""
        if self.sparse_prefetch_quads is not None:
            return self.sparse_prefetch_quads
        nbytes = self.int8_gemv_prefetch_bytes()
        return max(1, nbytes // (2 * n)) if nbytes else 0

    def sparse_gemv_prefetch_locality(self) -> int:
        """Locality of the sparse GEMV's weight prefetch: into L2 (LLVM locality 2, prefetcht1), whatever the
        facts' stream kind. Why: a quad's four row streams and the prefetches ahead of them would share the L1d's
        miss buffers; a prefetch that fills L1d (t0, and nta, which fills L1d too) stalled the demand loads
        behind it. Measured on Zen 4 (AMD EPYC, family 25 model 17; 2 threads, K 8192 x N 2048 from DRAM):
        prefetcht0 1.1 ms, prefetchnta 1.3 ms, prefetcht1 0.53 ms (the int8 GEMV, one stream per thread, is
        fastest with nta there)."""
        if self.int8_prefetch_locality is not None:
            return self.int8_prefetch_locality
        return 2

    def int8_gemm_panel_cols(self, k: int, n: int, col_multiple: int, max_cols: int = 64) -> int:
        """Weight columns per parallel task of the int8 GEMM: its panel (K bytes of nibbles-as-u8 per column
        plus K/32 f32 scales, i.e. 1.125 K bytes) is re-read by every row tile, so it must stay in L2: all
        ways but one (the streamed activation tile). At most ``max_cols`` and at least 2 tasks per core."""
        if self.int8_gemm_nt:
            return self.int8_gemm_nt
        budget = self.l2_bytes * (self.l2_ways - 1) // max(1, self.l2_ways)
        nt = max_cols
        while nt > col_multiple and (nt * k * 9 // 8 > budget or n // nt < 2 * self.num_cores or n % nt):
            nt //= 2
        return nt

    # --- prefill attention over the paged cache (compiler/model/kv_kernels.py) -----------------
    def attention_prefill_tile(self, head_dim: int, group_size: int) -> tuple[int, int]:
        """(query rows per tile, keys per scores pass) of ``paged_prefill_cpu`` / ``ragged_prefill_cpu``.

        The scores of a tile are ``sT[key, QV]`` with the QV query vectors along the SIMD lanes; one
        scores pass broadcasts one K element per head-dim step and multiply-adds it into QV / lanes
        accumulators, reading the tile's staged queries ``qT[head_dim, QV]`` once per key. Two limits:

        * registers: half the vector registers hold accumulators (the rest: the qT vectors being
          loaded, the broadcast), so QV <= regs / 2 x lanes with one key per pass: the widest tile
          amortizes the per-block work (key locations, mask, softmax) over the most query vectors;
        * L1d: qT (QV x head_dim f32) is re-read for every key, so it must stay in L1d next to the
          scores block and the K/V rows streaming through: QV x head_dim x 4 <= L1d / 2.

        QV is the largest power of two within both (at least one vector). Measured (1B heads, 512-row
        chunk, 2 threads): Zen 3 (AVX2, 16 regs, L1d 32 KiB) -> 64, the best of 16-128 (1.8x the
        16-vector tile); Emerald Rapids (AVX-512, 32 regs, L1d 48 KiB) -> 64, the best of 16-256
        (256, the register limit alone, is 1.6x slower: its 64 KiB qT spills to L2). NEON (32 regs,
        4 lanes) -> 64."""
        lanes = self.lanes(32)
        if self.attn_query_vectors:
            qv = self.attn_query_vectors
        else:
            qv = max(lanes, self.num_vector_regs // 2 * lanes)
            while qv > lanes and qv * head_dim * 4 > self.l1d_bytes // 2:
                qv //= 2
        rows = max(1, qv // max(1, group_size))
        return rows, 1

    # --- decode attention over the paged cache (compiler/model/kv_kernels.paged_decode_cpu) ----
    def attention_decode_tiling(self, head_dim: int, group_size: int, num_kv_heads: int, kv_bytes: int = 2,
                                page_size: int = 16) -> dict:
        """The decode attention kernel's tiling: ``tile_pages``, ``splits``, ``prefetch_pages``, ``heads_per_block``.

        A decode step reads every cached key and value of every layer exactly once, so unlike a GEMM
        there is no block to keep in L2/L3 for reuse within the step; what the caches decide is where the
        few reused pieces live and how far ahead the stream must be requested:

        * ``heads_per_block`` (GB): the query heads whose outputs are accumulated in registers while a
          tile's V rows stream by. Largest divisor of the group size with GB x head_dim f32 in half the
          vector registers (the rest: the V row vectors and the weight broadcasts) and under 1 KiB (TVM
          puts buffers of 1 KiB or more on the heap, where LLVM cannot keep them in registers: every
          multiply-add becomes a load and a store). AVX-512, head_dim 64, group 4 -> 2; AVX2 / NEON -> 1.
        * ``tile_pages`` (TP): keys per online-softmax step. A tile's scores (group x keys f32) are written
          by the QK pass and read by the max, exp, sum and every head block's PV pass, and its V rows
          (keys x head_dim x kv_bytes) are read once per head block: both stay in L1d, so
          keys x (head_dim x kv_bytes + 4 x group) <= L1d / 2, rounded down to a power of two pages
          (the more keys, the fewer rescales of the outputs and softmax passes). And by associativity:
          pages are a power-of-two stride apart (2 x KV heads x page_size x head_dim x kv_bytes, 64 KiB
          at the 1B shape in f32), a multiple of the way size, so one head's rows of every page of the
          tile fall into the same sets, a way per page: at most ways - 2 pages (as the GEMM's L1 panel
          budget, a way for the scores and outputs and one for the rows streaming in). Measured with
          cachegrind (docs/cachegrind-decode-attention.md): 8 pages under a 64 KiB 4-way or 96 KiB 6-way
          L1d miss 2.5x as often as 4 pages. f32 pages, head_dim 64, group 4: 48 KiB 12-way -> 4
          pages; 64 KiB 4-way -> 2; 96 KiB 6-way -> 4; 128 KiB 8-way -> 4.
        * ``prefetch_pages`` (PD): pages are scattered in the pool and one KV head's rows of a page are
          only head_dim x page_size x kv_bytes (2 KiB at 64 x 16 fp16) before a jump of a whole page,
          which hardware prefetchers, working within a 4 KiB page, do not follow (measured: 1.6x slower
          without software prefetch on cold pages). Each key's K and V rows PD pages ahead are prefetched into L1d;
          the lines in flight (PD x 2 x page_size x head_dim x kv_bytes) take at most a quarter of L1d,
          PD <= 4. 0 where TVM cannot emit a prefetch (system-lib builds).
        * ``keys_per_reduction`` (KU): the QK pass accumulates each key's dot product in a 16-lane vector
          that must be summed; summing KU = 4 keys' vectors together by shuffles that carry all four (17
          operations instead of 4 x 9) needs GB x KU accumulators on the stack and in half the registers:
          4 where they fit, else 2, else 1.
        * ``splits`` (NS, flash-decoding): one sequence gives num_kv_heads tasks; NS contiguous ranges of
          the context per KV head make num_kv_heads x NS tasks, the fewest that balance over the cores:
          NS = cores / gcd(num_kv_heads, cores) (8 KV heads: 1 on 2, 4 or 8 cores, 3 on 6 cores; 2 KV heads
          on 8 cores: 4). Each split is whole tiles, so short contexts use fewer; a merge (the log-sum-exp
          formula of ``merge_state_inplace``) combines them.
        """
        lanes = self.lanes(32)
        group = max(1, group_size)
        if self.attn_decode_heads_per_block:
            gb = self.attn_decode_heads_per_block
        else:
            reg_floats = max(lanes, self.num_vector_regs // 2 * lanes)
            fits = [g for g in range(1, group + 1) if group % g == 0 and g * head_dim <= reg_floats and g * head_dim * 4 < 1024]
            gb = max(fits) if fits else 1
        # keys whose dot products are summed together (kv_kernels.reduce_keys): KU accumulators per head of
        # the block, 16 f32 lanes each, also on the stack (< 1 KiB) and in half the registers
        vecs = max(1, 16 // lanes)
        ku = self.attn_decode_keys_per_reduction or next(
            (k for k in (4, 2) if gb * k * 16 * 4 < 1024 and gb * k * vecs <= self.num_vector_regs // 2), 1)
        if self.attn_decode_tile_pages:
            tp = self.attn_decode_tile_pages
        else:
            keys = (self.l1d_bytes // 2) // (head_dim * kv_bytes + 4 * group)
            ways = max(1, self.l1d_ways - 2)
            tp = 1
            while tp * 2 * page_size <= keys and tp * 2 <= ways and tp < 16:
                tp *= 2
        if self.attn_decode_prefetch_pages is not None:
            pd = self.attn_decode_prefetch_pages
        else:
            pd = max(1, min(4, (self.l1d_bytes // 4) // (2 * page_size * head_dim * kv_bytes)))
        if self.attn_decode_splits:
            ns = self.attn_decode_splits
        else:
            ns = max(1, self.num_cores) // math.gcd(max(1, num_kv_heads), max(1, self.num_cores))
        return {"tile_pages": int(tp), "splits": int(ns), "prefetch_pages": int(pd), "heads_per_block": int(gb),
                "keys_per_reduction": int(ku)}

    # --- what was derived, for the package and `llama-aot targets X --schedules` ---------------
    def derivations(self, example_k: int = 2048, example_n: int = 2048) -> list[tuple[str, object, str]]:
        """(knob, value, why) for every rule-level knob; shape-dependent ones for an example [K, N]."""
        mr, nrv, lanes = self.gemm_bcast_tile()
        blk_seq = self.gemm_bcast_blocking(example_k, example_n, 8)
        blk_pl = self.gemm_bcast_blocking(example_k, example_n, 128)
        dot = self.gemm_tile()

        def src(name):
            return "set explicitly" if getattr(self, name, None) is not None else None

        def blk(b):
            return None if b is None else {"mr": b[0], "nr": b[1] * b[2], "kc": b[3], "tn": b[4]}

        return [
            ("facts", self.facts_source, "where the cache facts came from (SoC file, host sysfs, default)"),
            ("vector_lanes_f32", self.lanes(32), f"{self.vector_bits}-bit vectors from the target's LLVM features"),
            ("gemv_lanes", self.gemv_vector_lanes(), src("gemv_lanes") or "max(16, f32 lanes): one logical vector covers two packed int4 words"),
            ("gemv_rows", self.gemv_row_tile(), src("gemv_rows") or f"rows x (accumulator + 2 temporaries) + x fit {self.num_vector_regs} registers"),
            ("gemv_unroll", self.gemv_k_unroll(), src("gemv_unroll") or "one 32-wide quantization group per unrolled step (scale loaded once)"),
            ("gemv_prefetch", self.gemv_prefetch_enabled(), src("gemv_prefetch") or "next row group prefetched (off where TVM cannot emit it: system-lib builds)"),
            ("gemv_scale_task_bytes", self.l2_bytes // 4, "f32 scales of one GEMV task in a quarter of the per-core L2"),
            ("gemm_bcast_tile", {"mr": mr, "nr": nrv * lanes}, src("gemm_rows") or "most accumulators that fit the registers with NR weight vectors + 1 broadcast, >= FMA latency x pipes"),
            ("gemm_l1_panel_budget", self.gemm_l1_panel_budget(), f"L1d {self.l1d_bytes} B x (ways - 2) / ways ({self.l1d_ways} ways): the [Kc, NR] micro-panel"),
            (f"gemm_bcast_sequential_K{example_k}_N{example_n}", blk(blk_seq), "first tile whose Kc (multiple of 8) fits the L1 budget; Tn: panel in half of L2, >= 4 tasks per core"),
            (f"gemm_bcast_planar_K{example_k}_N{example_n}", blk(blk_pl), "as above with planar q4's 128-k granule"),
            ("gemm_dot_tile", {"rows": dot[0], "cols": dot[1]}, "dot form (unpacked weights): accumulators + operands fit the registers, tile < 1 KiB (TVM stack limit)"),
            (f"gemm_dot_panel_K{example_k}_N{example_n}", self.gemm_panel(example_k, example_n), "dequantized [rows, K] f32 panel in half of L2, >= 4 tasks per core"),
            ("int8_gemv_prefetch_bytes", self.int8_gemv_prefetch_bytes(), src("int8_prefetch_bytes") or "a quarter of L1d (see int8_gemv_prefetch_bytes); 0 where the facts' stream_prefetch is none"),
            ("int8_gemv_prefetch_locality", self.int8_gemv_prefetch_locality(), src("int8_prefetch_locality") or f"0 (non-temporal) where the facts' stream_prefetch is nta, else 3; here {self.stream_prefetch!r}"),
            (f"int8_gemm_panel_cols_K{example_k}", self.int8_gemm_panel_cols(example_k, example_n, 16), src("int8_gemm_nt") or "1.125 K bytes per column in L2 x (ways - 1) / ways, >= 2 tasks per core"),
            ("sparse_gemv_splits", self.sparse_gemv_splits(), src("sparse_splits") or "one range of K per core, whole rows each"),
            ("sparse_gemv_prefetch_locality", self.sparse_gemv_prefetch_locality(), src("int8_prefetch_locality") or "2 (into L2): four row streams per quad share the L1d's miss buffers (see sparse_gemv_prefetch_locality)"),
            (f"sparse_gemv_prefetch_quads_N{example_n}", self.sparse_gemv_prefetch_quads(example_n), src("sparse_prefetch_quads") or "L1d / 4 in flight over the 2 N bytes of one quad of rows, at least 1"),
            ("attn_prefill_query_vectors_d128_gqa4", 4 * self.attention_prefill_tile(128, 4)[0], src("attn_query_vectors") or "vector registers / 2 x f32 lanes (one key per scores pass), halved until the staged queries (QV x head_dim f32) fit L1d / 2"),
            ("attn_decode_tiling_d64_gqa4_kv8_f32", self.attention_decode_tiling(64, 4, 8, 4), "pages per softmax step: keys x (V row + group scores) in L1d / 2, at most L1d ways - 2 pages; splits: cores / gcd(KV heads, cores); prefetch: pages ahead, lines in flight in L1d / 4; heads per block: outputs in half the registers and under 1 KiB (see attention_decode_tiling)"),
            ("elementwise_parallel_min", 1 << 14, "elements below which a parallel launch (~2-5 us) costs more than the loop"),
        ]

    def schedule_record(self) -> dict:
        """What the package records: the facts, the explicit knobs and every derived value."""
        return {
            "facts": {
                k: getattr(self, k)
                for k in ("arch", "vector_bits", "num_vector_regs", "num_cores", "l1d_bytes", "l1d_ways",
                          "l2_bytes", "l2_ways", "l3_bytes", "line_bytes", "stream_prefetch", "facts_source")
            },
            "knobs": self.knobs(),
            "derived": {name: value for name, value, _ in self.derivations()},
        }
