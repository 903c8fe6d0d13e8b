"""Ctrl-C that survives foreign frames.

TVM's FFI turns a KeyboardInterrupt raised inside a Python callback (a pass, a build hook) into a
RuntimeError, so a Ctrl-C in the middle of `tvm.compile` would surface as a crash. The handler here
records that the user asked to stop before raising, and callers ask ``requested()`` when an error
arrives to tell an interruption from a failure.
"""

from __future__ import annotations

import signal
import threading

_requested = threading.Event()


def _on_sigint(signum, frame):
    _requested.set()
    raise KeyboardInterrupt


def install() -> None:
    """Route SIGINT through the recording handler (only the main thread may set handlers)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)


def requested() -> bool:
    return _requested.is_set()


def is_interrupt(err: BaseException) -> bool:
    """True for a KeyboardInterrupt, or any error raised after the user pressed Ctrl-C."""
    return isinstance(err, KeyboardInterrupt) or requested()
