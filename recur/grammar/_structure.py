"""Structure of a checked recurrence, read from the AST as written (the code that runs).

For each update: the states it reads, whether it is affine in a given set of states,
whether it reads them only elementwise, and the first operation that breaks affinity (an
AST node, so that a reason names its line and column in the ``.rec`` file). The rules are
structural: sums keep affinity; a product, ``@``, ``dot`` or ``outer`` keeps it when at
most one side reads a state; a quotient when the divisor does not; ``.T``, indexing,
``sum`` and ``mean`` are linear; ``solve(A, b)`` is linear in ``b`` for a state-free
``A``; ``where(c, a, b)`` is affine for a state-free ``c``; ``x ** 1`` is ``x``; any other
function of a state, power of one, comparison of one and the ``max``/``min``/``logsumexp``
reductions break it. Nothing is simplified: ``h - h`` reads ``h`` and ``0 * tanh(h)`` is
nonlinear, as in the generated code's jaxpr.

Kinds follow the staged plan. The "reads" graph is cut into strongly connected components
in dependency order (``networkx``); each update is classified in the states of its own
component, the states of earlier components being given (they are computed first, like
inputs). So the Kalman mean is ``affine`` given the covariance, though jointly in both it
is nonlinear (the gain reads the covariance); the reason says both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import networkx as nx
import numpy as np

from . import _ast as A
from ._check import Checked
from ._functions import FUNCTIONS, REDUCTIONS, is_reduction

__all__ = ["const_value", "Info", "Staged", "analyze", "classify", "stage_states", "describe",
           "classify_states", "classify_outputs", "nonlinearity_origin"]

_COMPARISONS = {"<", "<=", ">", ">=", "==", "!="}


def const_value(chk: Checked, e, memo: Optional[dict] = None) -> Optional[float]:
    """The value of a subexpression made of numbers and dims, folded in float64 as NumPy
    would; ``None`` when it reads anything else."""
    memo = {} if memo is None else memo
    k = id(e)
    if k in memo:
        return memo[k]
    v = None
    if isinstance(e, A.Number):
        try:
            v = float(e.value)
        except OverflowError:
            v = math.inf
    elif isinstance(e, A.Name) and chk.kinds.get(e.name) == "dim":
        v = float(chk.dims[e.name])
    elif isinstance(e, A.UnaryOp) and e.op == "-":
        a = const_value(chk, e.operand, memo)
        v = None if a is None else -a
    elif isinstance(e, A.BinOp) and e.op in ("+", "-", "*", "/", "**"):
        a, b = const_value(chk, e.left, memo), const_value(chk, e.right, memo)
        if a is not None and b is not None:
            with np.errstate(all="ignore"):
                x, y = np.float64(a), np.float64(b)
                v = float({"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide,
                           "**": np.power}[e.op](x, y))
    memo[k] = v
    return v


@dataclass(frozen=True)
class Info:
    deps: frozenset              # states read (a new state ``h'`` as the name ``h'``)
    lin: bool                    # affine in the analysed states jointly
    elem: bool                   # states read only through elementwise operations
    offender: Optional[object] = None   # first AST node that breaks affinity


_CONST = Info(frozenset(), True, True)


def _nonlinear(node, infos, elem):
    """An operation that is nonlinear in whatever it reads."""
    deps = frozenset().union(*[i.deps for i in infos])
    if not deps:
        return _CONST
    bad = next((i for i in infos if not i.lin), None)
    return Info(deps, False, elem, bad.offender if bad else node)


def _keeps(node, infos, lin, elem):
    """An operation that is affine when ``lin`` holds; else the first non-affine operand's
    offender, or the node itself."""
    deps = frozenset().union(*[i.deps for i in infos])
    if not deps:
        return _CONST
    if lin:
        return Info(deps, True, elem)
    bad = next((i for i in infos if not i.lin), None)
    return Info(deps, False, elem, bad.offender if bad else node)


class _Analyzer:
    def __init__(self, chk: Checked, states: frozenset):
        self.chk = chk
        self.states = states
        self.memo: dict = {}
        self.consts: dict = {}

    def info(self, e) -> Info:
        k = id(e)
        if k not in self.memo:
            self.memo[k] = self._info(e)
        return self.memo[k]

    def _info(self, e) -> Info:
        chk = self.chk
        if isinstance(e, A.Name):
            if e.name in self.states:
                return Info(frozenset([e.name]), True, True)
            if chk.kinds.get(e.name) == "local":
                return self.info(chk.locals[e.name])
            return _CONST
        if isinstance(e, A.Primed):
            name = e.name + "'"
            return Info(frozenset([name]), True, True) if name in self.states else _CONST
        if isinstance(e, A.UnaryOp):
            a = self.info(e.operand)
            return a if e.op == "-" else _nonlinear(e, [a], a.elem)
        if isinstance(e, A.BinOp):
            return self._binop(e)
        if isinstance(e, A.Transpose):
            a = self.info(e.operand)
            flat = len(chk.shapes[id(e.operand)]) <= 1
            return _keeps(e, [a], a.lin, a.elem if flat else not a.deps)
        if isinstance(e, A.Index):
            a = self.info(e.operand)
            return _keeps(e, [a], a.lin, not a.deps)
        if isinstance(e, A.Call):
            return self._call(e)
        return _CONST                      # numbers, slices

    def _binop(self, e) -> Info:
        a, b = self.info(e.left), self.info(e.right)
        elem = a.elem and b.elem
        both = bool(a.deps and b.deps)
        if e.op in ("+", "-"):
            return _keeps(e, [a, b], a.lin and b.lin, elem)
        if e.op == "*":
            return _keeps(e, [a, b], a.lin and b.lin and not both, elem)
        if e.op == "/":
            return _keeps(e, [a, b], a.lin and not b.deps, elem)
        if e.op == "@":
            return _keeps(e, [a, b], a.lin and b.lin and not both, not (a.deps or b.deps))
        if e.op == "**" and const_value(self.chk, e.right, self.consts) == 1:
            return a                           # x ** 1 is x (integer_pow, y=1)
        return _nonlinear(e, [a, b], elem)     # ** comparisons and/or

    def _call(self, e) -> Info:
        cat = FUNCTIONS[e.func].category
        if cat == "constant":
            return _CONST
        if is_reduction(e):
            a = self.info(e.args[0])
            if REDUCTIONS[e.func][1]:
                return _keeps(e, [a], a.lin, not a.deps)
            return _nonlinear(e, [a], not a.deps)
        infos = [self.info(x) for x in e.args]
        deps = frozenset().union(*[i.deps for i in infos])
        elem = all(i.elem for i in infos)
        if cat == "elementwise":
            return _nonlinear(e, infos, elem)
        if cat == "where":
            c, x, y = infos
            return _keeps(e, infos, not c.deps and x.lin and y.lin, elem)
        if cat == "bilinear":
            x, y = infos
            return _keeps(e, infos, x.lin and y.lin and not (x.deps and y.deps), not deps)
        if cat == "solve":
            m, b = infos
            return _keeps(e, infos, not m.deps and b.lin, not deps)
        return _nonlinear(e, infos, not deps)   # inv, cholesky, logdet


def analyze(chk: Checked, expr, states) -> Info:
    """Structure of ``expr`` in ``states`` (other states are given, like inputs)."""
    return _Analyzer(chk, frozenset(states)).info(expr)


def classify(info: Info, state: str) -> str:
    if info.lin:
        return "affine"
    if info.deps <= {state} and info.elem:
        return "diagonal"
    return "nonlinear"


# ---------------------------------------------------------------------------------- stages

def stage_states(reads: dict, order: list) -> list:
    """Strongly connected components of the reads graph, each in file order, in an order
    where a component comes after every component it reads."""
    g = nx.DiGraph()
    g.add_nodes_from(order)
    for s, rs in reads.items():
        g.add_edges_from((r, s) for r in rs)
    cond = nx.condensation(g)
    pos = {s: i for i, s in enumerate(order)}
    comps = [sorted(cond.nodes[c]["members"], key=pos.__getitem__)
             for c in nx.lexicographical_topological_sort(
                 cond, key=lambda c: min(pos[s] for s in cond.nodes[c]["members"]))]
    return comps


@dataclass(frozen=True)
class Staged:
    """The verdict on one update: its kind in its own stage, and the joint view."""
    kind: str                     # in the states of its own stage, earlier stages given
    stage: tuple                  # the states of its stage, file order
    given: tuple                  # states of earlier stages it reads
    info: Info                    # structure in its own stage's states
    joint: Info                   # structure in all states jointly
    joint_kind: str


def _names(order, subset) -> str:
    names = [s for s in order if s in subset]
    return ", ".join(names)


def _is_are(names: str) -> str:
    return "are" if "," in names else "is"


def _where(node) -> str:
    line, col = getattr(node, "line", 0), getattr(node, "column", 0)
    return f" (line {line}, column {col})" if line else ""


def _through(node) -> str:
    return "" if node is None else f" through {A.unparse(node, 80)}{_where(node)}"


def describe(state: str, v: Staged, order: list, chk: Checked) -> str:
    """The reason for a state's kind, pointing at the ``.rec`` line of the operation that
    makes it nonlinear."""
    info, given = v.info, _names(order, v.given)
    own = _names(order, info.deps)
    if v.kind == "affine" and not own:
        msg = (f"{state}' reads only {given}, of an earlier stage: constant given {given}"
               if given else f"{state}' does not read the state")
    elif v.kind == "affine":
        msg = f"{state}' is affine in {own}" + (f" given {given}" if given else "")
    elif v.kind == "diagonal":
        msg = (f"{state}' is nonlinear in {state}{_through(info.offender)}, reading only "
               f"{state}, elementwise" + (f", given {given}" if given else ""))
    else:
        msg = _nonlinear_reason(state, v, order, chk) + (f"; given {given}" if given else "")
    if given:
        they = "it does" if _is_are(given) == "is" else "they do"
        msg += (f" ({given} {_is_are(given)} computed first, as an earlier stage: {they} not "
                f"read {state})")
        if v.kind != v.joint_kind and v.joint.offender is not None:
            msg += f"; jointly in all states it is {v.joint_kind}{_through(v.joint.offender)}"
    return msg


def _nonlinear_reason(state, v: Staged, order, chk) -> str:
    info, off = v.info, v.info.offender
    sub = analyze(chk, off, v.stage) if off is not None else info
    names = _names(order, sub.deps) or _names(order, info.deps) or "the state"
    msg = f"{state}' is nonlinear in {names}{_through(off)}"
    others = [s for s in v.stage if s != state and s in info.deps]
    if others and state in info.deps and analyze(chk, chk.updates[state], [state]).lin:
        held = ", ".join(others)
        msg += f" (affine in {state} when {held} {_is_are(held)} held fixed)"
    return msg


def classify_states(chk: Checked) -> tuple:
    """``(reads, stages, verdicts)``: per state the states its update reads (file order),
    the stages in dependency order, and per state its :class:`Staged` verdict."""
    order = list(chk.states)
    joint = _Analyzer(chk, frozenset(order))
    reads = {s: tuple(x for x in order if x in joint.info(e).deps)
             for s, e in chk.updates.items()}
    stages = stage_states(reads, order)
    verdicts = {}
    for comp in stages:
        own = _Analyzer(chk, frozenset(comp))
        for s in comp:
            info, whole = own.info(chk.updates[s]), joint.info(chk.updates[s])
            given = tuple(x for x in reads[s] if x not in comp)
            verdicts[s] = Staged(classify(info, s), tuple(comp), given, info, whole,
                                 classify(whole, s))
    return reads, stages, verdicts


def nonlinearity_origin(chk: Checked):
    """A predicate: does this node itself break affinity in the states and new states
    (its operands are affine, it is not)?"""
    an = _Analyzer(chk, frozenset(list(chk.states) + [s + "'" for s in chk.states]))
    return lambda node: an.info(node).offender is node


def classify_outputs(chk: Checked) -> dict:
    """Per output: ``(kind, reason)``, its kind in the old and new states jointly
    (``affine``, e.g. a linear readout ``S'.T @ q``, or ``nonlinear``)."""
    order = list(chk.states)
    names = order + [s + "'" for s in order]
    an = _Analyzer(chk, frozenset(names))
    out = {}
    for y, e in chk.outputs.items():
        info = an.info(e)
        read = _names(names, info.deps)
        if not info.deps:
            out[y] = ("affine", f"{y} does not read the state")
        elif info.lin:
            out[y] = ("affine", f"{y} is affine in {read}")
        else:
            out[y] = ("nonlinear", f"{y} is nonlinear{_through(info.offender)} (it reads {read})")
    return out
