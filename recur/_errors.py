"""The errors recur raises on purpose: one hierarchy, each naming what is wrong and where."""

from __future__ import annotations


class RecurError(Exception):
    """Base class of every error recur raises on purpose."""


class StepFunctionError(RecurError, TypeError):
    """The step function cannot be traced, is called with the wrong arity, or returns
    another structure, shape or dtype than the state; or the inputs are inconsistent."""


class ConvergenceError(RecurError, RuntimeError):
    """A parallel method did not converge and ``on_failure="raise"`` was asked for."""


class PlanError(RecurError, ValueError):
    """A method or option that cannot apply to this recurrence (e.g. ``method="scan"``
    on a stage that is not affine), or an option with an invalid value."""


class DSLError(RecurError, ValueError):
    """A ``.rec`` text that parses but is wrong. ``line``/``column`` are 1-based or None."""

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None,
                 filename: str | None = None):
        super().__init__(message)
        self.line = line
        self.column = column
        self.filename = filename


class DSLSyntaxError(DSLError):
    """A ``.rec`` text that does not parse; ``line`` and ``column`` are 1-based."""


__all__ = [
    "RecurError",
    "StepFunctionError",
    "ConvergenceError",
    "PlanError",
    "DSLError",
    "DSLSyntaxError",
]
