"""One exception type for every user-facing failure.

It lives in the runtime, the bottom floor: the runtime ships alone and imports nothing from the
compiler, and every other room (targets, schedules, compiler, bench) may import the runtime.

The CLI prints ``error: <message>`` on one line and exits non-zero for it; anything
else is a bug and keeps its traceback.
"""


class LlamaAotError(Exception):
    """A problem with the user's input or environment, with a message saying what to do."""
