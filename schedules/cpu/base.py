"""Common base for our CPU rules: target check, params, and "never raise" wrapping."""

from __future__ import annotations

import logging

from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.schedule import ScheduleError
from tvm.target import Target

from ..report import RULE_ANNOTATION, note_fallback
from .params import CPUParams

logger = logging.getLogger(__name__)

# What a rule may hit on a function it does not fit: TVM's schedule primitives refusing (ScheduleError is a
# RuntimeError; other TVM checks raise RuntimeError/ValueError/TypeError too) and our pattern code finding an
# unexpected shape (ValueError, IndexError, AttributeError, KeyError). Anything else is a bug and propagates.
RULE_MISMATCH = (ScheduleError, RuntimeError, ValueError, TypeError, IndexError, AttributeError, KeyError)


class ScheduleFallback(Exception):
    """A rule's preferred form matched the function but cannot be built with these facts/knobs: the next,
    slower form runs instead. Logged and recorded in the package (schedules/report.py), never silent."""


def mark(sch: s_tir.Schedule, block, rule: str) -> None:
    """Record on a block which rule scheduled it (read by tests, the package's schedule record and
    debugging; ignored by lowering)."""
    sch.annotate(block, RULE_ANNOTATION, rule)


class CPURule(dl.ScheduleRule):
    """A dlight ScheduleRule for LLVM CPU targets.

    Subclasses implement `schedule(func, target, params) -> Schedule | None`. `apply` returns None for non-CPU
    targets, for functions already marked scheduled, and whenever the subclass raises: a rule that does not
    match (or hits a schedule error on an unexpected shape) must leave the function to the next rule.
    """

    name = "cpu-rule"

    def __init__(self, params: CPUParams | None = None):
        self.params = params
        self._params_cache: dict[str, CPUParams] = {}

    def is_target_available(self, target: Target) -> bool:
        return target is not None and target.kind.name == "llvm"

    def params_for(self, target: Target) -> CPUParams:
        if self.params is not None:
            return self.params
        key = str(target)
        if key not in self._params_cache:
            self._params_cache[key] = CPUParams.from_target(target)
        return self._params_cache[key]

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):  # noqa: D102
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
            if int(func.attrs["tirx.is_scheduled"]) == 1:
                return None
        try:
            # with `compile --tuned DB` active, the kernel's record (if any) overrides knobs of the params
            from schedules.tuning.apply import schedule_with_records  # pylint: disable=import-outside-toplevel

            return schedule_with_records(self, func, target, self.params_for(target))
        except ScheduleFallback as err:
            note_fallback(type(self).__name__, str(err))
            return None
        except RULE_MISMATCH as err:
            logger.debug("%s did not apply: %s", type(self).__name__, err)
            return None

    def schedule(self, func: tirx.PrimFunc, target: Target, params: CPUParams) -> s_tir.Schedule | None:
        raise NotImplementedError

