"""Vectorizable float32 math for CPU kernels: what LLVM would otherwise turn into one libm call per lane.

TVM lowers ``exp``/``exp2`` of a vector to the LLVM intrinsic, which x86 and AArch64 back ends expand
into a scalar libm call per lane (there is no vector math library in a TVM build). These expressions
use only multiply-adds, a floor, a float-to-int conversion and a shift, so they stay in vector registers.
Accuracy: ``exp2_poly`` has a relative error of a few float32 ulps; ``e^x`` through it (``2^(x log2 e)``)
inherits the rounding of the product, about ``1e-7 * |x|`` relative (e.g. 3e-6 at x = 30).
"""

from __future__ import annotations

import math

from tvm import te, tirx

LOG2E = math.log2(math.e)


def exp2_poly(x):
    """2^x for a float32 expression: clamp to [-126, 126] (2^-126 and 2^126 stand in for 0 and
    infinity), round-to-nearest range reduction ``x = n + f`` with ``|f| <= 1/2``, a degree-7 Taylor
    polynomial of ``2^f = e^(f ln 2)`` (truncation error 5e-9) and ``2^n`` built in the exponent bits."""
    x = tirx.max(tirx.min(x, tirx.const(126.0, "float32")), tirx.const(-126.0, "float32"))
    n = tirx.floor(x + tirx.const(0.5, "float32"))
    f = x - n
    ln2 = math.log(2.0)
    p = tirx.const(ln2**7 / math.factorial(7), "float32")
    for i in range(6, -1, -1):
        p = p * f + tirx.const(ln2**i / math.factorial(i), "float32")
    two_n = tirx.reinterpret("float32", (n.astype("int32") + tirx.const(127, "int32")) << tirx.const(23, "int32"))
    return p * two_n


def silu_mul_te(ffn: int):
    """TE function ``gate_up[..., 2 * ffn] -> silu(gate) * up [..., ffn]`` (SwiGLU), float32, with
    ``silu(g) = g / (1 + 2^(-g log2 e))`` through :func:`exp2_poly`."""

    def compute(gate_up: te.Tensor):
        lead = tuple(gate_up.shape[:-1])

        def body(*idx):
            g = gate_up[idx[:-1] + (idx[-1],)]
            u = gate_up[idx[:-1] + (idx[-1] + ffn,)]
            return g * u / (tirx.const(1.0, "float32") + exp2_poly(g * tirx.const(-LOG2E, "float32")))

        return te.compute(lead + (ffn,), body, name="silu_multiply")

    return compute
