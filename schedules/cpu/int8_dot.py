"""The 4-byte int8 dot products of the int8-activation kernels (int8_gemm.py, int8_gemv.py), one per ISA, and
the numerics they all implement (``numpy_reference``).

Every primitive computes, per int32 lane l, ``sum_j w[4l + j] * a[4l + j]`` exactly, with w's bytes the weight
nibbles 0..15 (valid as u8 and as s8) and a's bytes the int8 activations -127..127:

* ``avx512vnni``: ``vpdpbusd`` zmm (AVX-512 VNNI with BW and VL), 16 lanes;
* ``avxvnni``: VEX ``vpdpbusd`` ymm (AVX-VNNI: Alder Lake and later Intel client cores, Zen 5 client parts),
  8 lanes; the same LLVM intrinsic as the AVX-512 VL form, LLVM picks the VEX encoding under ``+avxvnni``;
* ``avx2``: ``vpmaddubsw`` (u8 x s8 products, adjacent pairs summed into int16 with signed saturation) then
  ``vpmaddwd`` against ones (adjacent int16 pairs summed into int32), 8 lanes. Exact here: a pair sum is
  at most 2 * 15 * 127 = 3810 in magnitude, far from the int16 saturation at 32767. The bound leaves room to
  add up to ``PAIR_TERMS`` pair vectors in int16 before widening once (``dot4_sum``);
* ``dotprod``: AArch64 ``sdot``, 4 lanes.
"""

from __future__ import annotations

from tvm.script import tirx as T

GROUP = 32  # k-values per quantization group (weights and activations)

ISA_LANES = {"avx512vnni": 16, "avxvnni": 8, "avx2": 8, "dotprod": 4}  # int32 lanes of one dot product

# int16 pair-sum vectors that can be added before widening: PAIR_TERMS * 3810 = 30480 <= 32767 (3810 =
# 2 * 15 * 127, the largest |u8 nibble x s8 activation| pair sum), so the int16 sums never wrap or saturate.
PAIR_TERMS = 8


def int8_dot_isa(target) -> str | None:
    """The dot product the int8 kernels use on ``target`` (a key of ``ISA_LANES``), or None (no int8 kernels:
    the f32 ones stay). x86_64: AVX-512 VNNI (with BW, VL) first, then AVX-VNNI, then AVX2; AArch64: dotprod."""
    from .params import _features, _target_arch  # pylint: disable=import-outside-toplevel

    if target is None or target.kind.name != "llvm":
        return None
    arch, feats = _target_arch(target), set(_features(target))
    if arch == "x86_64":
        if {"avx512vnni", "avx512bw", "avx512vl"} <= feats:
            return "avx512vnni"
        if {"avxvnni", "avx2"} <= feats:
            return "avxvnni"
        if "avx2" in feats:
            return "avx2"
    if arch == "aarch64" and "dotprod" in feats:
        return "dotprod"
    return None


def weight_offset(scheme_name: str, isa: str) -> int | None:
    """What the weight bytes the dot products see are offset by, per scheme and ISA, or None (no int8 kernel):

    * q4f16: the nibble, q + 8 (0..15: a valid u8 and s8 operand), on every ISA: 8;
    * cb4f16: its int8 code from the row's 16-byte table (``lut``): ``vpdpbusd`` wants the weight as the u8
      operand, so the table is stored + 128 (``code ^ 0x80``, 1..255) and 128 is the offset; ``sdot`` takes
      it signed as it is: 0. AVX2's ``vpmaddubsw`` would saturate its int16 pair sums (2 x 255 x 127 > 32767):
      no cb4 kernel there, the f32 one stays."""
    if scheme_name == "q4f16":
        return 8
    if scheme_name == "cb4f16" and isa in ("avx512vnni", "avxvnni"):
        return 128
    if scheme_name == "cb4f16" and isa == "dotprod":
        return 0
    return None


def lut(isa: str, table, idx, nbytes: int):
    """Bytes ``table[idx[i]]`` (idx 0..15; ``table`` holds the same 16 bytes in every 16-byte lane): one
    ``vpshufb`` (x86, within each 16-byte lane) or ``tbl`` (AArch64)."""
    vec = f"int8x{nbytes}"
    if isa == "dotprod":
        name = "llvm.aarch64.neon.tbl1.v16i8"
    else:
        name = {64: "llvm.x86.avx512.pshuf.b.512", 32: "llvm.x86.avx2.pshuf.b", 16: "llvm.x86.ssse3.pshuf.b.128"}[nbytes]
    return _intrin(name, vec, table, T.reinterpret(vec, idx))


def _intrin(name, dtype, *args):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), *args, dtype=dtype)


def pair_sums(w, a, lanes: int):
    """AVX2: int16 vector (2 * lanes) of ``w[2i] * a[2i] + w[2i + 1] * a[2i + 1]`` (``vpmaddubsw``, w the u8
    side), each at most 3810 in magnitude."""
    bytes_ = f"int8x{4 * lanes}"
    name = {8: "llvm.x86.avx2.pmadd.ub.sw", 4: "llvm.x86.ssse3.pmadd.ub.sw.128"}[lanes]
    return _intrin(name, f"int16x{2 * lanes}", T.reinterpret(bytes_, w), T.reinterpret(bytes_, a))


def widen_pairs(s16, lanes: int):
    """AVX2: int32 vector (lanes) of adjacent int16 pair sums (``vpmaddwd`` against ones): exact."""
    name = {8: "llvm.x86.avx2.pmadd.wd", 4: "llvm.x86.sse2.pmadd.wd"}[lanes]
    return _intrin(name, f"int32x{lanes}", s16, T.broadcast(T.int16(1), 2 * lanes))


_VPDPBUSD = {16: "llvm.x86.avx512.vpdpbusd.512", 8: "llvm.x86.avx512.vpdpbusd.256", 4: "llvm.x86.avx512.vpdpbusd.128"}
_WIDTHS = {"avx512vnni": (16, 8, 4), "avxvnni": (8, 4), "avx2": (8, 4), "dotprod": (4,)}  # lanes each can do


def dot4(isa: str, acc, w, a, lanes: int):
    """``acc[l] + sum_j w[4l + j] * a[4l + j]`` per int32 lane l (``lanes`` of them): w and a are int32
    vectors read as bytes, w's the weight nibbles 0..15, a's the signed int8 activations."""
    if lanes not in _WIDTHS.get(isa, ()):
        raise ValueError(f"no {lanes}-lane int8 dot product for {isa}")
    if isa == "avx2":
        return acc + widen_pairs(pair_sums(w, a, lanes), lanes)
    name = "llvm.aarch64.neon.sdot.v4i32.v16i8" if isa == "dotprod" else _VPDPBUSD[lanes]
    bytes_ = f"int8x{4 * lanes}"
    return _intrin(name, f"int32x{lanes}", acc, T.reinterpret(bytes_, w), T.reinterpret(bytes_, a))


def dot4_sum(isa: str, acc, terms, lanes: int):
    """``acc + sum over (w, a) in terms of dot4(w, a)``. AVX2 adds the terms' pair sums in int16 and widens
    once (one ``vpmaddwd`` for all terms instead of one each; exact for up to PAIR_TERMS terms). The other
    ISAs chain their accumulating instruction; more than two terms go into two chains added at the end, so
    the dependent latency (about 5 cycles per ``vpdpbusd``) stays that of two."""
    if isa != "avx2":
        half = (len(terms) + 1) // 2 if len(terms) > 2 else len(terms)
        chains = [acc, T.broadcast(T.int32(0), lanes)]
        for i, (w, a) in enumerate(terms):
            chains[i >= half] = dot4(isa, chains[i >= half], w, a, lanes)
        return chains[0] if half == len(terms) else chains[0] + chains[1]
    if len(terms) > PAIR_TERMS:
        raise ValueError(f"{len(terms)} int16 pair-sum terms could saturate (at most {PAIR_TERMS})")
    s16 = None
    for w, a in terms:
        p = pair_sums(w, a, lanes)
        s16 = p if s16 is None else s16 + p
    return acc + widen_pairs(s16, lanes)


def numpy_reference(x, nibbles, wscale):
    """The kernels' numerics in numpy, per activation row and group of 32 k (the weight's quantization group):

        d  = float32(max |x|) / 127;  q = nearbyint(x * (1 / d)) in [-127, 127]  (0 when d == 0; half to even)
        y[s, n] = sum_g float32(sum_{k in g} q[s, k] * (nibble[n, k] - 8)) * (wscale[n, g] * d[s, g])

    Integer sums are exact within a group, float32 across groups. x: f32 [rows, K]; nibbles: uint [N, K]
    (q + 8); wscale: f16 [N, K/32]."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    return numpy_reference_int(x, nibbles.astype(np.int64) - 8, wscale)


def numpy_reference_int(x, wint, wscale):
    """``numpy_reference`` for any integer weights ``wint`` [N, K] (|w| <= 127) with scales [N, K/32]: the
    cb4f16 kernels' numerics with wint = the row's codes at the indices and wscale = the row scale per group."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    rows, k = x.shape
    xg = x.astype(np.float32).reshape(rows, k // GROUP, GROUP)
    d = np.abs(xg).max(-1) / np.float32(127)
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d > 0)
    q = np.rint(xg * inv[..., None]).astype(np.int64)
    w = wint.astype(np.int64).reshape(wint.shape[0], k // GROUP, GROUP)
    dots = np.einsum("rgk,ngk->rng", q, w).astype(np.float32)  # exact int sums, < 2**24
    scl = wscale.astype(np.float32)[None, :, :] * d[:, None, :]
    return (dots * scl).sum(-1, dtype=np.float32)
