"""Weight quantization schemes and the Relax nn ops that consume packed weights.

    >>> from compiler.quantization import get_scheme
    >>> s = get_scheme("q4f16")
    >>> s.param_specs(4096, 4096)
    {'qweight': ((4096, 512), 'uint32'), 'scale': ((4096, 128), 'float16')}

``QuantizedLinear`` / ``QuantizedEmbedding`` live in ``.linear`` / ``.embedding`` (they import
TVM; they are also reachable as attributes of this package, loaded on first use).
Layouts are documented in docs/quantization.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtime_stubs.errors import LlamaAotError
from .base import QuantScheme
from .codebook import CodebookScheme, make_codebook
from .group import Q4F16Scheme, Q8F16Scheme, make_q4f16, make_q8f16
from .kmajor import Q4F16KScheme, make_q4f16k
from .q0 import NoQuantScheme, make_q0

_FACTORIES: dict[str, Callable[..., QuantScheme]] = {
    "q0f32": make_q0,
    "q0f16": make_q0,
    "q8f16": make_q8f16,
    "q4f16": make_q4f16,
    "q4f16k": make_q4f16k,  # q4f16 stored K-major: the projections of --activation-sparsity
    "cb8f16": make_codebook,
    "cb4f16": make_codebook,
    "cb3f16": make_codebook,
}

#: Registered scheme names.
SCHEMES: tuple[str, ...] = tuple(_FACTORIES)

#: Scheme used for the embedding and the lm_head under ``--keep-embedding-precision``.
HIGH_PRECISION_SCHEME = "q0f16"


def get_scheme(name: str, **options: Any) -> QuantScheme:
    """The scheme called ``name``; ``options`` are scheme-specific (q8f16: ``group_size``).

    Unknown names or options raise :class:`LlamaAotError`.
    """
    factory = _FACTORIES.get(name) if isinstance(name, str) else None
    if factory is None:
        raise LlamaAotError(
            f"unknown quantization scheme {name!r}; known schemes: {', '.join(SCHEMES)}"
        )
    return factory(name, **options)


def select_schemes(
    name: str, keep_embedding_precision: bool = False, **options: Any
) -> dict[str, QuantScheme]:
    """Schemes per weight role: keys ``"linear"``, ``"embedding"``, ``"lm_head"``.

    With ``keep_embedding_precision`` the embedding table and lm_head (tied or not) use
    ``q0f16`` while every other linear uses ``name``. Validation of ``name``/``options``
    happens even when they end up unused by the embedding.
    """
    main = get_scheme(name, **options)
    head = get_scheme(HIGH_PRECISION_SCHEME) if keep_embedding_precision else main
    return {"linear": main, "embedding": head, "lm_head": head}


def __getattr__(attr: str):  # lazy: keep `import compiler.quantization` free of TVM
    if attr == "QuantizedLinear":
        from .linear import QuantizedLinear  # pylint: disable=import-outside-toplevel

        return QuantizedLinear
    if attr == "QuantizedEmbedding":
        from .embedding import QuantizedEmbedding  # pylint: disable=import-outside-toplevel

        return QuantizedEmbedding
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = [
    "SCHEMES",
    "HIGH_PRECISION_SCHEME",
    "CodebookScheme",
    "LlamaAotError",
    "NoQuantScheme",
    "Q4F16KScheme",
    "Q4F16Scheme",
    "Q8F16Scheme",
    "QuantScheme",
    "QuantizedEmbedding",
    "QuantizedLinear",
    "get_scheme",
    "select_schemes",
]
