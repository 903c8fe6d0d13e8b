"""Which schedule every kernel got, and every fallback to a slower form: recorded, logged, never silent.

``ApplySchedules(rules)`` replaces dlight's ``ApplyDefaultSchedule`` in the pipeline: the same first-rule-wins
loop, plus the kernel's name made known to the rules (for their fallback notes) and, when a ``collecting()``
report is open, which rule (and variant, from the ``llama_aot.schedule_rule`` block annotation) scheduled each
PrimFunc. ``llama-aot compile`` writes the report into ``llama-aot.json``; tests read it to check that no
rule falls back on the registry's facts.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from dataclasses import dataclass, field

import tvm
from tvm import tirx
from tvm.ir.transform import module_pass
from tvm.target import Target

logger = logging.getLogger(__name__)

RULE_ANNOTATION = "llama_aot.schedule_rule"


@dataclass
class ScheduleReport:
    kernels: dict[str, str] = field(default_factory=dict)  # PrimFunc name -> rule (variant) or "unscheduled"
    fallbacks: list[dict] = field(default_factory=list)  # {"kernel", "rule", "reason"}

    def to_json(self) -> dict:
        return {"kernels": dict(sorted(self.kernels.items())), "fallbacks": list(self.fallbacks)}


_REPORT: contextvars.ContextVar[ScheduleReport | None] = contextvars.ContextVar("schedule_report", default=None)
_KERNEL: contextvars.ContextVar[str] = contextvars.ContextVar("schedule_kernel", default="<unknown>")


@contextlib.contextmanager
def collecting():
    """Collect a ScheduleReport of every ApplySchedules run inside the block."""
    report = ScheduleReport()
    token = _REPORT.set(report)
    try:
        yield report
    finally:
        _REPORT.reset(token)


def note_fallback(rule: str, reason: str) -> None:
    """A rule's preferred form did not fit the current kernel: warn at compile time and record it."""
    kernel = _KERNEL.get()
    logger.warning("schedule fallback in %s: %s's preferred form does not fit (%s)", kernel, rule, reason)
    report = _REPORT.get()
    if report is not None:
        report.fallbacks.append({"kernel": kernel, "rule": rule, "reason": reason})


def rule_of(func: tirx.PrimFunc) -> str | None:
    """The rule annotation a scheduled PrimFunc carries (the first block that has one)."""
    import tvm_ffi  # pylint: disable=import-outside-toplevel

    found: list[str] = []

    def visit(node):
        if type(node).__name__ == "SBlock" and node.annotations is not None and RULE_ANNOTATION in node.annotations:
            found.append(str(node.annotations[RULE_ANNOTATION]))

    tvm_ffi.structural_walk(func.body, visit)
    return sorted(set(found))[0] if found else None


def _is_scheduled(func) -> bool:
    return func.attrs is not None and "tirx.is_scheduled" in func.attrs and int(func.attrs["tirx.is_scheduled"]) == 1


@module_pass(opt_level=0, name="ApplySchedules")
class ApplySchedules:  # pylint: disable=too-few-public-methods
    """dlight's ApplyDefaultSchedule (first rule that returns a schedule wins), reporting what each kernel got."""

    def __init__(self, *rules):
        self.rules = list(rules)

    def transform_module(self, mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
        report = _REPORT.get()
        updated = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            name = gv.name_hint
            if _is_scheduled(func):
                if report is not None:
                    report.kernels[name] = rule_of(func) or "hand-written"
                continue
            target = func.attrs.get("target") if func.attrs is not None else None
            target = target or Target.current(allow_none=False)
            token = _KERNEL.set(name)
            try:
                for rule in self.rules:
                    sch = rule.apply(func, target, False)
                    if sch is None:
                        continue
                    sch = sch[0] if isinstance(sch, list) else sch
                    updated[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                    if report is not None:
                        report.kernels[name] = rule_of(updated[gv]) or type(rule).__name__
                    break
                else:
                    if report is not None:
                        report.kernels[name] = "unscheduled"
            finally:
                _KERNEL.reset(token)
        for gv, func in updated.items():
            mod[gv] = func
        return mod
