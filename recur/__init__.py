"""recur: a compiler for recurrences.

Write one step ``h_t = f(h_{t-1}, x_t, params)``; recur finds its structure, checks it,
and evaluates all steps in parallel over time where that pays.
"""

from ._api import Recurrence, plan, recurrence, scan
from ._dsl import DSLRecurrence, compile, load, loads
from ._errors import (
    ConvergenceError,
    DSLError,
    DSLSyntaxError,
    PlanError,
    RecurError,
    StepFunctionError,
)
from ._info import Info, Reason
from ._plan import Plan, Stage
from . import lax

__version__ = "0.1.0"

__all__ = [
    "ConvergenceError",
    "DSLRecurrence",
    "DSLError",
    "DSLSyntaxError",
    "Info",
    "Plan",
    "PlanError",
    "Reason",
    "RecurError",
    "Recurrence",
    "Stage",
    "StepFunctionError",
    "compile",
    "lax",
    "load",
    "loads",
    "plan",
    "recurrence",
    "scan",
]
