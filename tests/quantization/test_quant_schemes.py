"""Numpy-only tests of the quantization schemes: registry, layouts, round trips.

Every packer output is checked against an independent implementation written here
(per-element Python loops with integer bit arithmetic, np.unpackbits), never against the
scheme's own dequantize alone.
"""

import json

import numpy as np
import pytest

from runtime_stubs.errors import LlamaAotError
from compiler.quantization import SCHEMES, get_scheme, select_schemes
from compiler.quantization import base as qbase

# ----------------------------------------------------------------------------- independent refs


def ref_slot(k_total, kk):
    """(word, nibble position) of logical element kk, straight from docs/quantization.md."""
    if k_total % 128 == 0:  # planar: value 128b + 16j + i is nibble j of word 16b + i
        return (kk // 128) * 16 + kk % 16, (kk % 128) // 16
    return kk // 8, kk % 8  # sequential


def ref_pack_q4(w):
    """Per-element Python reimplementation of the q4f16 contract -> (words, scales)."""
    n_rows, k = w.shape
    words = [[0] * (k // 8) for _ in range(n_rows)]
    scales = np.zeros((n_rows, k // 32), dtype=np.float16)
    for n in range(n_rows):
        for g in range(k // 32):
            grp = [np.float32(v) for v in w[n, g * 32 : (g + 1) * 32]]
            amax = max(abs(v) for v in grp)
            s16 = np.float16(np.float32(amax) / np.float32(7))
            scales[n, g] = s16
            s = float(np.float32(s16))
            for j, v in enumerate(grp):
                kk = g * 32 + j
                q = 0 if s == 0 else round(float(np.float32(v) / np.float32(s)))
                q = min(7, max(-7, q))
                word, pos = ref_slot(k, kk)
                words[n][word] |= (q + 8) << (4 * pos)
    return np.array(words, dtype=np.uint32), scales


def ref_unpack_q4(qweight, scale):
    """Unpack via the little-endian byte stream + np.unpackbits (no shifts)."""
    n_rows, words = qweight.shape
    raw = qweight.astype("<u4").tobytes()
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
    stored = bits.reshape(n_rows, words * 8, 4) @ np.array([1, 2, 4, 8])  # byte stream order
    k = words * 8
    nibbles = np.zeros((n_rows, k), np.int64)
    for kk in range(k):
        word, pos = ref_slot(k, kk)
        nibbles[:, kk] = stored[:, 8 * word + pos]
    s = np.repeat(scale.astype(np.float64), 32, axis=1)
    return (nibbles - 8) * s


def ref_pack_q8(w, g):
    n_rows, k = w.shape
    q = np.zeros((n_rows, k), dtype=np.int8)
    scales = np.zeros((n_rows, k // g), dtype=np.float16)
    for n in range(n_rows):
        for gi in range(k // g):
            grp = [np.float32(v) for v in w[n, gi * g : (gi + 1) * g]]
            s16 = np.float16(np.float32(max(abs(v) for v in grp)) / np.float32(127))
            scales[n, gi] = s16
            s = float(np.float32(s16))
            for j, v in enumerate(grp):
                qq = 0 if s == 0 else round(float(np.float32(v) / np.float32(s)))
                q[n, gi * g + j] = min(127, max(-127, qq))
    return q, scales


def _weights(n, k, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
    w[0, :32] = 0.0  # an all-zero group
    w[1, 5] = 0.9  # an outlier
    return w


# ----------------------------------------------------------------------------- registry


def test_registry_names():
    assert SCHEMES == ("q0f32", "q0f16", "q8f16", "q4f16", "q4f16k", "cb8f16", "cb4f16", "cb3f16")
    for name in SCHEMES:
        assert get_scheme(name).name == name


def test_unknown_scheme_lists_known_names():
    with pytest.raises(LlamaAotError) as e:
        get_scheme("q3f16")
    for name in SCHEMES:
        assert name in str(e.value)


@pytest.mark.parametrize(
    "name,opts",
    [("q4f16", {"group_size": 64}), ("q4f16", {"bogus": 1}), ("q0f16", {"group_size": 32}),
     ("q8f16", {"group_size": 0}), ("q8f16", {"group_size": 2.5}), ("q8f16", {"x": 1})],
)
def test_bad_options(name, opts):
    with pytest.raises(LlamaAotError):
        get_scheme(name, **opts)


def test_select_schemes_keep_embedding_precision():
    plain = select_schemes("q4f16")
    assert plain["linear"].name == plain["embedding"].name == plain["lm_head"].name == "q4f16"
    keep = select_schemes("q4f16", keep_embedding_precision=True)
    assert keep["linear"].name == "q4f16"
    assert keep["embedding"].name == keep["lm_head"].name == "q0f16"
    with pytest.raises(LlamaAotError):
        select_schemes("nope", keep_embedding_precision=True)


# ----------------------------------------------------------------------------- specs


def test_param_specs():
    assert get_scheme("q0f32").param_specs(48, 64) == {"weight": ((48, 64), "float32")}
    assert get_scheme("q0f16").param_specs(48, 64) == {"weight": ((48, 64), "float16")}
    assert get_scheme("q8f16").param_specs(48, 64) == {
        "qweight": ((48, 64), "int8"), "scale": ((48, 2), "float16")}
    assert get_scheme("q8f16", group_size=16).param_specs(48, 64)["scale"] == ((48, 4), "float16")
    assert get_scheme("q8f16", group_size=-1).param_specs(48, 64)["scale"] == ((48, 1), "float16")
    assert get_scheme("q4f16").param_specs(48, 64) == {
        "qweight": ((48, 8), "uint32"), "scale": ((48, 2), "float16")}
    assert list(get_scheme("q4f16").param_specs(48, 64)) == ["qweight", "scale"]


@pytest.mark.parametrize("name", ["q8f16", "q4f16"])
def test_indivisible_k_is_an_error(name):
    s = get_scheme(name)
    with pytest.raises(LlamaAotError, match=r"\[48, 60\]"):
        s.param_specs(48, 60)
    with pytest.raises(LlamaAotError, match=r"\[4, 40\]"):
        s.pack(np.zeros((4, 40), np.float32))


def test_bytes_per_weight():
    assert get_scheme("q0f32").bytes_per_weight() == 4.0
    assert get_scheme("q0f16").bytes_per_weight() == 2.0
    assert get_scheme("q8f16").bytes_per_weight() == 1.0 + 2 / 32
    assert get_scheme("q4f16").bytes_per_weight() == 0.5 + 2 / 32
    assert get_scheme("q8f16", group_size=-1).bytes_per_weight(4096) == 1.0 + 2 / 4096
    assert get_scheme("cb4f16").bytes_per_weight(4096) == 0.5 + 18 / 4096
    assert get_scheme("cb3f16").bytes_per_weight(4096) == 3 / 8 + 10 / 4096
    # consistent with the actual array sizes (cb8f16's shared codebooks also depend on N: its own test)
    for name in SCHEMES:
        s = get_scheme(name)
        packed = s.pack(np.ones((8, 64), np.float32))
        per_row = name.startswith(("cb4", "cb3"))
        if name != "cb8f16":
            assert sum(a.nbytes for a in packed.values()) == s.bytes_per_weight(64 if per_row else None) * 8 * 64


@pytest.mark.parametrize("name", SCHEMES)
def test_layout_is_json(name):
    lay = get_scheme(name).layout()
    assert json.loads(json.dumps(lay)) == lay
    assert lay["scheme"] == name
    assert set(lay["params"]) == set(get_scheme(name).param_specs(32, 32))


# ----------------------------------------------------------------------------- hand layouts


def test_q4_layout_by_hand():
    w = np.zeros((3, 32), np.float32)
    w[0, 0:8] = [0, 1, 2, 3, 4, 5, 6, 7]
    w[0, 8:16] = [-1, -2, -3, -4, -5, -6, -7, 0]
    # 16:24 stay zero
    w[0, 24:32] = [7, -7, 0.4, 0.6, -0.5, 0.5, 1.5, 2.5]  # rint: half to even
    w[1] = 0.5 * w[0]  # same codes, scale 0.5
    # row 2: all zero -> scale 0, codes 8, no NaN
    packed = get_scheme("q4f16").pack(w)
    qw, sc = packed["qweight"], packed["scale"]
    assert qw.dtype == np.uint32 and sc.dtype == np.float16
    expect_row = [0xFEDCBA98, 0x81234567, 0x88888888, 0xAA88981F]
    assert [int(v) for v in qw[0]] == expect_row
    assert [int(v) for v in qw[1]] == expect_row
    assert [int(v) for v in qw[2]] == [0x88888888] * 4
    assert sc.tolist() == [[1.0], [0.5], [0.0]]
    # little-endian byte stream: byte j holds element 2j (low nibble) and 2j+1 (high)
    assert list(qw[0].astype("<u4").tobytes()[:4]) == [0x98, 0xBA, 0xDC, 0xFE]
    deq = get_scheme("q4f16").dequantize(packed)
    assert np.isfinite(deq).all()
    assert deq[0, 24:32].tolist() == [7, -7, 0, 1, 0, 0, 2, 2]
    assert deq[1, 0:8].tolist() == [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5]
    assert (deq[2] == 0).all()


def test_q4_planar_layout_by_hand():
    """K = 256: two planar blocks; value 128b + 16j + i is nibble j of word 16b + i."""
    w = np.zeros((1, 256), np.float32)
    w[0, 17] = 7  # b=0, j=1, i=1 -> word 1, bits 4..7 (group 0: scale 1)
    w[0, 100] = -7  # b=0, j=6, i=4 -> word 4, bits 24..27 (group 3: scale 1)
    w[0, 255] = 3.5  # b=1, j=7, i=15 -> word 31, bits 28..31 (group 7: scale 0.5, q = 7)
    s = get_scheme("q4f16")
    assert s.nibble_order(256) == "planar" and s.manifest_fields(1, 256) == {"qweight": {"nibble_order": "planar"}}
    packed = s.pack(w)
    expect = [0x88888888] * 32
    expect[1], expect[4], expect[31] = 0x888888F8, 0x81888888, 0xF8888888
    assert [int(v) for v in packed["qweight"][0]] == expect
    assert packed["scale"].tolist() == [[1, 0, 0, 1, 0, 0, 0, 0.5]]
    np.testing.assert_array_equal(s.dequantize(packed), w)


@pytest.mark.parametrize("k,order", [(32, "sequential"), (96, "sequential"), (192, "sequential"),
                                     (128, "planar"), (2048, "planar"), (8192, "planar")])
def test_q4_nibble_order_rule(k, order):
    s = get_scheme("q4f16")
    assert s.nibble_order(k) == order
    assert s.manifest_fields(4, k) == {"qweight": {"nibble_order": order}}
    assert get_scheme("q8f16").manifest_fields(4, k) == get_scheme("q0f16").manifest_fields(4, k) == {}


def test_q4_decoder_accepts_nibble_zero():
    s = get_scheme("q4f16")
    packed = {"qweight": np.zeros((1, 4), np.uint32), "scale": np.ones((1, 1), np.float16)}
    assert (s.dequantize(packed) == -8).all()


def test_q8_layout_by_hand():
    w = np.array([[127, -63.5, 0.5, 1.5, 0, 0, 0, 0]], np.float32)
    packed = get_scheme("q8f16", group_size=4).pack(w)
    assert packed["qweight"].dtype == np.int8
    assert packed["qweight"].tolist() == [[127, -64, 0, 2, 0, 0, 0, 0]]
    assert packed["scale"].tolist() == [[1.0, 0.0]]


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("k", [96, 192, 128, 384])  # sequential (K % 128 != 0) and planar
def test_q4_round_trip_against_independent_impl(k):
    w = _weights(6, k)
    s = get_scheme("q4f16")
    packed = s.pack(w)
    words, scales = ref_pack_q4(w)
    np.testing.assert_array_equal(packed["qweight"], words)
    np.testing.assert_array_equal(packed["scale"], scales)
    deq = s.dequantize(packed)
    assert deq.dtype == np.float32 and deq.shape == w.shape
    np.testing.assert_array_equal(deq, ref_unpack_q4(packed["qweight"], packed["scale"]))
    half = np.repeat(packed["scale"].astype(np.float64), 32, axis=1) / 2
    assert (np.abs(deq.astype(np.float64) - w) <= half * (1 + 1e-6) + 1e-12).all()
    assert (deq[0, :32] == 0).all()


@pytest.mark.parametrize("group", [32, 16, -1])
def test_q8_round_trip_against_independent_impl(group):
    w = _weights(5, 64, seed=1)
    s = get_scheme("q8f16", group_size=group)
    packed = s.pack(w)
    g = 64 if group == -1 else group
    q, scales = ref_pack_q8(w, g)
    np.testing.assert_array_equal(packed["qweight"], q)
    np.testing.assert_array_equal(packed["scale"], scales)
    deq = s.dequantize(packed)
    ref = q.astype(np.float64) * np.repeat(scales.astype(np.float64), g, axis=1)
    np.testing.assert_array_equal(deq, ref)
    half = np.repeat(scales.astype(np.float64), g, axis=1) / 2
    assert (np.abs(deq.astype(np.float64) - w) <= half * (1 + 1e-6) + 1e-12).all()


def test_q0_round_trips():
    w = _weights(4, 64, seed=2)
    p32 = get_scheme("q0f32").pack(w)
    np.testing.assert_array_equal(get_scheme("q0f32").dequantize(p32), w)
    s16 = get_scheme("q0f16")
    p16 = s16.pack(w)
    assert p16["weight"].dtype == np.float16
    deq = s16.dequantize(p16)
    assert deq.dtype == np.float32
    # independent: float16 rounding per element via Python's struct half-precision codec
    import struct

    ref = [[struct.unpack("<e", struct.pack("<e", float(v)))[0] for v in row] for row in w]
    np.testing.assert_array_equal(deq, np.array(ref, np.float32))
    nz = np.abs(w) > 1e-4  # normal fp16 range: relative rounding error <= 2^-11
    assert (np.abs(deq - w)[nz] <= np.abs(w)[nz] * 2.0**-11).all()


def test_chunked_packing_is_identical(monkeypatch):
    w = _weights(16, 128, seed=3)  # K = 128: planar q4 across chunks; N = 16: q4f16k's 8-channel words
    full = {n: get_scheme(n).pack(w) for n in SCHEMES}
    monkeypatch.setattr(qbase, "PACK_ROW_CHUNK", 3)
    from compiler.quantization import group, q0

    monkeypatch.setattr(group, "PACK_ROW_CHUNK", 3)  # (kmajor.py reads base's)
    monkeypatch.setattr(q0, "PACK_ROW_CHUNK", 3)
    for n in SCHEMES:
        chunked = get_scheme(n).pack(w)
        for key in full[n]:
            np.testing.assert_array_equal(chunked[key], full[n][key])


# ----------------------------------------------------------------------------- input errors


@pytest.mark.parametrize("name", SCHEMES)
def test_bad_inputs(name):
    s = get_scheme(name)
    with pytest.raises(LlamaAotError):
        s.pack(np.zeros((2, 3, 32), np.float32))
    bad = np.zeros((2, 32), np.float32)
    bad[1, 1] = np.nan
    with pytest.raises(LlamaAotError, match="NaN"):
        s.pack(bad)
    with pytest.raises(LlamaAotError):
        s.dequantize({"nope": np.zeros((2, 32), np.float32)})


@pytest.mark.parametrize("name", ["q0f16", "q8f16", "q4f16"])
def test_fp16_overflow_is_an_error(name):
    w = np.zeros((1, 32), np.float32)
    w[0, 0] = 1e7
    with pytest.raises(LlamaAotError, match="float16|q0f32"):
        get_scheme(name).pack(w)
