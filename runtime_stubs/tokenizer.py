"""Load a package's (or checkpoint's) ``tokenizer.json`` with the ``tokenizers`` library.

Every failure is one :class:`LlamaAotError` line: the library reports a bad file with a bare
``Exception`` (its Rust errors are not subclassed), and a file can parse yet be unusable (e.g. a
WordLevel model whose ``unk_token`` is not in its vocabulary only fails when it meets an unknown
word), so the tokenizer encodes and decodes a probe text before it is returned. Some corrupt files make
the library's Rust code panic (e.g. a BPE merge that names a token id past the vocabulary):
pyo3 turns that into ``pyo3_runtime.PanicException``, a BaseException that cannot be imported by name,
so it is recognized by its type's module and name (:func:`_is_panic`); anything else propagates.
"""

from __future__ import annotations

from pathlib import Path

from .errors import LlamaAotError

# Letters, digits, punctuation, accents, CJK and an emoji: touches the normalizer, the pre-tokenizer
# (split regex, byte-level mapping), the model (known and unknown words) and the decoder.
_PROBE = "Hello, world! 123 ünïcödé 日本語 🙂\n\tend"
# Enough for a file name plus a library message; longer text is cut (a message stays one short line).
_MAX_DETAIL = 300


def load_tokenizer(path: str | Path):
    """``tokenizers.Tokenizer`` from the file at ``path``; LlamaAotError if it is missing or unusable."""
    path = Path(path)
    fix = "copy the tokenizer.json that belongs to the checkpoint (or pass token ids with --prompt-ids)"
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise LlamaAotError(f"{path} is missing: pass token ids with --prompt-ids instead of a text prompt") from None
    except OSError as e:
        raise LlamaAotError(f"cannot read {path}: {e.strerror or e}; check the file is readable") from None
    except UnicodeDecodeError as e:
        raise LlamaAotError(f"{path} is corrupt: not UTF-8 text (byte {e.start}); {fix}") from None
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_str(text)
    except Exception as e:  # the library raises bare Exception for every parse/validation error
        raise LlamaAotError(f"{path} is not a valid tokenizer file ({_detail(e)}); {fix}") from None
    except BaseException as e:
        if not _is_panic(e):
            raise
        raise LlamaAotError(f"{path} is not a valid tokenizer file (the tokenizers library failed: {_detail(e)}); {fix}") from None
    try:
        tok.decode(tok.encode(_PROBE).ids)
    except Exception as e:  # ditto: e.g. "WordLevel error: Missing [UNK] token from the vocabulary"
        raise LlamaAotError(f"{path} cannot tokenize text ({_detail(e)}); {fix}") from None
    except BaseException as e:
        if not _is_panic(e):
            raise
        raise LlamaAotError(f"{path} cannot tokenize text (the tokenizers library failed: {_detail(e)}); {fix}") from None
    return tok


def _is_panic(e: BaseException) -> bool:
    return type(e).__name__ == "PanicException" and type(e).__module__ == "pyo3_runtime"


def _detail(e: BaseException) -> str:
    s = " ".join(str(e).split()) or type(e).__name__
    return s if len(s) <= _MAX_DETAIL else s[: _MAX_DETAIL - 3] + "..."
