"""The fused Relax nn ops, compiled for llvm, against numpy references.

Shapes are tiny (K = H = 64, N = 48, V = 40) to keep the TVM builds cheap.
"""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402
from tvm.relax.frontend import nn  # noqa: E402

from runtime_stubs.errors import LlamaAotError  # noqa: E402
from compiler.quantization import SCHEMES, get_scheme  # noqa: E402
from compiler.quantization.embedding import QuantizedEmbedding  # noqa: E402
from compiler.quantization.kernels import CAST_BLOCK, MATMUL_BLOCK, TAKE_BLOCK  # noqa: E402
from compiler.quantization.linear import QuantizedLinear  # noqa: E402

N, K, V, H = 48, 64, 40, 64
TARGET = {"kind": "llvm"}


class Wrapper(nn.Module):
    def __init__(self, scheme, compute_dtype):
        self.lin = QuantizedLinear(K, N, scheme, compute_dtype)
        self.emb = QuantizedEmbedding(V, H, scheme, compute_dtype)

    def forward(self, x):
        return self.lin(x)

    def embed(self, ids):
        return self.emb(ids)

    def lm_head(self, x):
        return self.emb.lm_head_forward(x)


def export(scheme, compute_dtype):
    return Wrapper(scheme, compute_dtype).export_tvm(
        spec={
            "forward": {"x": nn.spec.Tensor([1, "seq", K], compute_dtype)},
            "embed": {"ids": nn.spec.Tensor(["seq"], "int32")},
            "lm_head": {"x": nn.spec.Tensor([1, "seq", H], compute_dtype)},
        }
    )


def fuse(mod):
    return tvm.transform.Sequential(
        [
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ]
    )(mod)


def rel_err(y, ref):
    return float(np.abs(y.astype(np.float64) - ref).max() / np.abs(ref).max())


_BUILT = {}


def built(name, compute_dtype):
    key = (name, compute_dtype)
    if key not in _BUILT:
        scheme = get_scheme(name)
        mod, params = export(scheme, compute_dtype)
        ex = tvm.compile(mod, tvm.target.Target(TARGET))
        rng = np.random.default_rng(7)
        w_lin = (rng.standard_normal((N, K)) * 0.1).astype(np.float32)
        w_emb = (rng.standard_normal((V, H)) * 0.1).astype(np.float32)
        packed = {"lin": scheme.pack(w_lin), "emb": scheme.pack(w_emb)}
        dev = tvm.cpu()
        # export_tvm: every function takes the model inputs then ALL params, in `params` order
        args = []
        for pname, _ in params:
            owner, suffix = pname.split(".")
            args.append(tvm.runtime.tensor(packed[owner][suffix], dev))
        _BUILT[key] = (scheme, relax.VirtualMachine(ex, dev), args, packed, dev)
    return _BUILT[key]


@pytest.mark.parametrize("name", SCHEMES)
@pytest.mark.parametrize("seq", [1, 5])
def test_linear_embedding_lm_head_fp32(name, seq):
    scheme, vm, args, packed, dev = built(name, "float32")
    rng = np.random.default_rng(seq)
    x = rng.standard_normal((1, seq, K)).astype(np.float32)

    y = vm["forward"](tvm.runtime.tensor(x, dev), *args).numpy()
    ref = x.astype(np.float64) @ scheme.dequantize(packed["lin"]).astype(np.float64).T
    assert y.shape == (1, seq, N) and y.dtype == np.float32
    assert rel_err(y, ref) <= 1e-4

    ids = rng.integers(0, V, size=seq).astype(np.int32)
    e = vm["embed"](tvm.runtime.tensor(ids, dev), *args).numpy()
    assert e.shape == (seq, H) and e.dtype == np.float32
    # dequantization is exact in float32, so the gather is bit-identical
    np.testing.assert_array_equal(e, scheme.dequantize(packed["emb"])[ids])

    logits = vm["lm_head"](tvm.runtime.tensor(x, dev), *args).numpy()
    ref = x.astype(np.float64) @ scheme.dequantize(packed["emb"]).astype(np.float64).T
    assert logits.shape == (1, seq, V) and logits.dtype == np.float32
    assert rel_err(logits, ref) <= 1e-4


@pytest.mark.parametrize("name", ["q4f16", "q8f16"])
def test_fp16_compute_dtype(name):
    scheme, vm, args, packed, dev = built(name, "float16")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 5, K)).astype(np.float16)
    y = vm["forward"](tvm.runtime.tensor(x, dev), *args).numpy()
    ref = x.astype(np.float64) @ scheme.dequantize(packed["lin"]).astype(np.float64).T
    assert y.dtype == np.float16 and rel_err(y, ref) <= 2e-3  # fp16 output rounding only
    ids = np.array([0, 39, 7], np.int32)
    e = vm["embed"](tvm.runtime.tensor(ids, dev), *args).numpy()
    assert e.dtype == np.float16
    np.testing.assert_array_equal(e, scheme.dequantize(packed["emb"])[ids].astype(np.float16))
    logits = vm["lm_head"](tvm.runtime.tensor(x, dev), *args).numpy()
    ref = x.astype(np.float64) @ scheme.dequantize(packed["emb"]).astype(np.float64).T
    assert logits.dtype == np.float32 and rel_err(logits, ref) <= 1e-4


def test_parameter_names_follow_attribute_paths():
    class Attn(nn.Module):
        def __init__(self):
            self.qkv_proj = QuantizedLinear(K, N, get_scheme("q4f16"))

    class Layer(nn.Module):
        def __init__(self):
            self.attn = Attn()

    class Model(nn.Module):
        def __init__(self):
            self.embed_tokens = QuantizedEmbedding(V, H, get_scheme("q0f16"))
            self.layers = nn.ModuleList([Layer()])

        def forward(self, ids):
            h = self.embed_tokens(ids)
            return self.layers[0].attn.qkv_proj(h)

    _, params = Model().export_tvm(spec={"forward": {"ids": nn.spec.Tensor(["seq"], "int32")}})
    assert [(n, tuple(p.shape), p.dtype) for n, p in params] == [
        ("embed_tokens.weight", (V, H), "float16"),
        ("layers.0.attn.qkv_proj.qweight", (N, K // 8), "uint32"),
        ("layers.0.attn.qkv_proj.scale", (N, K // 32), "float16"),
    ]


def test_module_to_keeps_packed_dtypes():
    lin = QuantizedLinear(K, N, get_scheme("q4f16"))
    lin.to("float16")
    assert lin.compute_dtype == "float16"
    assert (lin.qweight.dtype, lin.scale.dtype) == ("uint32", "float16")


def test_bad_arguments():
    with pytest.raises(LlamaAotError):
        QuantizedLinear(K, N, get_scheme("q4f16"), compute_dtype="int8")
    with pytest.raises(LlamaAotError, match=r"\[48, 60\]"):
        QuantizedLinear(60, N, get_scheme("q4f16"))


# ----------------------------------------------------------------------------- IR structure


def _blocks(fn):
    sch = tvm.s_tir.Schedule(fn)
    out, todo = [], [sch.get_sblock("root")]
    while todo:
        rv = todo.pop()
        out.append(sch.get(rv))
        todo.extend(sch.get_child_blocks(rv))
    return out  # out[0] is root


def _is_float(dtype):
    return str(dtype).startswith(("float", "bfloat"))


def _numel(shape):
    n = 1
    for d in shape:
        if not isinstance(d, int) and not hasattr(d, "value"):
            return None  # symbolic
        n *= int(d)
    return n


def weight_copies(low, scheme):
    """Every float tensor/buffer in ``low`` with a weight's element count that is not a
    stored (packed) parameter: Relax bindings, PrimFunc params and allocated buffers."""
    suffixes = set(scheme.param_specs(N, K))
    weight_sizes = {N * K, V * H}
    found = []
    for gv, f in low.functions.items():
        if isinstance(f, relax.Function):
            for b in [b for blk in f.body.blocks for b in blk.bindings]:
                ty = b.var.ty
                if not (isinstance(ty, relax.TensorType) and ty.shape is not None):
                    continue
                if _is_float(ty.dtype) and _numel(ty.shape.values) in weight_sizes:
                    found.append(f"{gv.name_hint}: Relax tensor {b.var} {ty}")
        elif isinstance(f, tvm.tirx.PrimFunc):
            for p in f.params:
                if p.name.split(".")[-1] in suffixes:
                    continue
                if _is_float(p.dtype) and _numel(p.shape) in weight_sizes:
                    found.append(f"{gv.name_hint}: buffer param {p.name}")
            for blk in _blocks(f):
                for buf in blk.alloc_buffers:
                    if _is_float(buf.dtype) and _numel(buf.shape) in weight_sizes:
                        found.append(f"{gv.name_hint}: alloc {buf.name}{list(buf.shape)}")
    return found


def test_weight_copy_checker_catches_unfused_dequant():
    """Negative control: a separate dequantize op + matmul must be flagged."""
    from tvm import te

    scheme = get_scheme("q4f16")

    class Unfused(nn.Module):
        def __init__(self):
            self.lin = QuantizedLinear(K, N, scheme)

        def forward(self, x):
            def deq(qw, sc):
                return te.compute((N, K), lambda n, k: scheme.dequant_expr(
                    {"qweight": qw, "scale": sc}, n, k), name="deq")

            w = nn.op.tensor_expr_op(deq, "deq", [self.lin.qweight, self.lin.scale])
            return nn.op.matmul(x, nn.op.permute_dims(w))

    mod, _ = Unfused().export_tvm(spec={"forward": {"x": nn.spec.Tensor([1, "seq", K], "float32")}})
    assert weight_copies(fuse(mod), scheme)


@pytest.mark.parametrize("name,compute_dtype", [("q4f16", "float32"), ("q8f16", "float32"),
                                                ("q4f16", "float16"), ("q0f16", "float32")])
def test_no_dequantized_weight_copy(name, compute_dtype):
    """After LegalizeOps+FuseOps+FuseTIR: one reduction block per matmul, reading the packed
    weight; no float buffer anywhere with the weight's element count; no Relax tensor either."""
    scheme = get_scheme(name)

    class WithEpilogue(Wrapper):  # an elementwise epilogue FuseOps will merge into the matmul
        def forward(self, x):
            return nn.op.silu(self.lin(x))

    mod, _ = WithEpilogue(scheme, compute_dtype).export_tvm(
        spec={
            "forward": {"x": nn.spec.Tensor([1, "seq", K], compute_dtype)},
            "embed": {"ids": nn.spec.Tensor(["seq"], "int32")},
            "lm_head": {"x": nn.spec.Tensor([1, "seq", H], compute_dtype)},
        }
    )
    low = fuse(mod)
    assert weight_copies(low, scheme) == []

    relax_funcs = {gv.name_hint: f for gv, f in low.functions.items()
                   if isinstance(f, relax.Function)}
    assert set(relax_funcs) == {"forward", "embed", "lm_head"}
    for fname, f in relax_funcs.items():  # each is a single call_tir (epilogue fused)
        bindings = [b for blk in f.body.blocks for b in blk.bindings]
        calls = [b for b in bindings if isinstance(b.value, relax.Call)]
        assert len(calls) == 1, f"{fname}: {len(calls)} calls"

    n_reductions = 0
    for gv, f in low.functions.items():
        if not isinstance(f, tvm.tirx.PrimFunc):
            continue
        fname = gv.name_hint
        blocks = _blocks(f)
        names = [b.name_hint for b in blocks[1:]]
        reductions = [b for b in blocks[1:] if any(int(iv.iter_type) == 2 for iv in b.iter_vars)]
        if TAKE_BLOCK in names:
            assert not reductions and names == [TAKE_BLOCK]
            continue
        assert len(reductions) == 1, f"{fname}: {names}"
        red = reductions[0]
        assert red.name_hint == MATMUL_BLOCK
        read = {(r.source.name.split(".")[-1], str(r.source.dtype)) for r in red.reads}
        for suffix, (_, dtype) in scheme.param_specs(N, K).items():
            assert (suffix, dtype) in read, f"{fname}: {read}"
        if compute_dtype == "float16" and fname.startswith("fused"):
            assert CAST_BLOCK in names
        n_reductions += 1
    assert n_reductions == 2  # linear (+silu) and lm_head


# ----------------------------------------------------------------------------- packing vs TE dequant


@pytest.mark.parametrize("k", [64, 192, 128, 256])  # q4f16: sequential (K % 128 != 0), then planar
@pytest.mark.parametrize("name", ["q4f16", "q8f16"])
def test_te_dequant_expr_agrees_with_packing(name, k):
    """numpy pack -> the scheme's TE dequant expression (what every matmul / gather inlines) compiled
    for llvm -> bit-identical to numpy's dequantize and within scale/2 of the float weights: the packer,
    the numpy reference and the kernels agree on the bit layout."""
    from tvm import te

    scheme = get_scheme(name)
    n = 24
    rng = np.random.default_rng(k)
    w = (rng.standard_normal((n, k)) * 0.1).astype(np.float32)
    packed = scheme.pack(w)
    specs = scheme.param_specs(n, k)
    ph = {s: te.placeholder(shape, dtype, name=s) for s, (shape, dtype) in specs.items()}
    deq_te = te.compute((n, k), lambda i, j: scheme.dequant_expr(ph, i, j), name="deq")
    f = tvm.compile(te.create_prim_func([*ph.values(), deq_te]), target="llvm")
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((n, k), np.float32), dev)
    f(*[tvm.runtime.tensor(packed[s], dev) for s in specs], out)
    deq = scheme.dequantize(packed)
    np.testing.assert_array_equal(out.numpy(), deq)
    half = np.repeat(packed["scale"].astype(np.float32), 32, axis=1) / 2
    assert (np.abs(deq - w) <= half * (1 + 1e-6)).all()
