"""Quoting what a user's file says inside a one-line :class:`~runtime_stubs.errors.LlamaAotError` message.

A loader that echoes a value from a corrupt file must not let it break the message: a name with a newline
would split it, a lone surrogate (from ``"\\ud800"`` in JSON) cannot be printed to a UTF-8 terminal, and a
10,000-element list would bury the advice. :func:`shown` is ``repr`` (which escapes newlines, control
characters and surrogates) cut to a few dozen characters and three levels of nesting.
"""

from __future__ import annotations

import reprlib
from typing import Any, Iterable

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlong = 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 6
_REPR.maxdict = 4

MAX_SHOWN = 120


def shown(value: Any) -> str:
    """A short, single-line, printable repr of ``value`` (at most ``MAX_SHOWN`` characters)."""
    s = _REPR.repr(value)
    return s if len(s) <= MAX_SHOWN else s[: MAX_SHOWN - 3] + "..."


def plain(name: Any) -> str:
    """A name as is when it is a short printable string (``model.norm.weight``), else :func:`shown`."""
    if isinstance(name, str) and name and name.isprintable() and len(name) <= MAX_SHOWN:
        return name
    return shown(name)


def shown_list(items: Iterable[Any], limit: int = 3, quote: bool = True) -> str:
    """The first ``limit`` items, each :func:`shown` (``quote=False``: :func:`plain`), then how many more."""
    items = list(items)
    show = shown if quote else plain
    text = ", ".join(show(x) for x in items[:limit])
    return text + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
