"""What ``llama-aot eval --data`` (and ``prune --data``) read: the embedded model's held-out or training files, or
a text file of the user's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime_stubs.errors import LlamaAotError

from .corpus import read_sources, split_files


@dataclass(frozen=True)
class Document:
    """One document: scored as ``[bos] + tokens + [eos]``, its windows never reaching into another document."""

    name: str
    text: str


HELDOUT, TRAIN = "heldout", "train"


def load_documents(data: str) -> list[Document]:
    """``heldout`` / ``train``: every held-out / training file of the embedded model's corpus
    (evaluation/corpus.py); else a UTF-8 text file, one document."""
    if data in (HELDOUT, TRAIN):
        names = split_files()[data == HELDOUT]
        return [Document(n, t) for n, t in zip(names, read_sources(names))]
    path = Path(data)
    if not path.is_file():
        raise LlamaAotError(f"--data {data}: no such file; pass a UTF-8 text file, `{HELDOUT}` or `{TRAIN}` "
                            "(the embedded model's held-out or training files)")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise LlamaAotError(f"cannot read {path}: {e.strerror or e}; check the file is readable") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LlamaAotError(f"{path} is not UTF-8 text (byte {e.start}); pass a text file") from None
    if "\0" in text:
        raise LlamaAotError(f"{path} holds NUL bytes: it is binary, not text; pass a text file")
    if not text.strip():
        raise LlamaAotError(f"{path} is empty: there is nothing to score; pass a text file with content")
    return [Document(path.name, text)]
