r"""The symbolic pass: each definition and update of a ``.rec`` recurrence as a sympy
expression, and the classification of every state with its reason.

The classification is structural, on the AST as written (:mod:`._structure`): the code that
runs is generated from the AST, never from a simplified form (``(h*h - 1)/(h - 1)`` at
``h = 1`` is NaN, as in NumPy), so the verdict is the one the plan finds on the generated
step's jaxpr. Sympy informs the reasons only: when sympy's automatic simplification
(``h + 0*tanh(h)`` is ``h``) or ``sympy.cancel`` (``(h**2 - 1)/(h - 1)`` is ``h + 1`` away
from ``h = 1``) finds a simpler kind, the reason says so, and that writing the simplified
form gets that plan.

Expressions are built from the AST, never from text: one ``sympy.Symbol`` per declared
name (so ``I``, ``N``, ``E``, ``S``, ``Q`` are plain symbols), with elementwise meaning
(commutative products, NumPy broadcasting). Everything that is not elementwise algebra is
an opaque, undefined sympy function: elementwise functions (``tanh``, ``sigmoid``, ...,
comparisons, ``where``), and the shape-sensitive ones (``matmul``, ``transpose``,
``index``, the reductions, ``dot``, ``outer``, ``inv``, ``solve``, ``cholesky``,
``logdet``, ``eye``, ``zeros``, ``ones``), which carry, as their last argument, a ``Tuple``
with the shapes of their arguments and result (and a static extra: subscript id or axis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import sympy as sp

from . import _ast as A
from ._check import Checked
from ._functions import is_reduction
from ._structure import classify_outputs, classify_states, describe

__all__ = ["Symbolic", "Info", "analyze", "build_symbolic", "dsl_str", "SHAPED",
           "LINEAR_OPS", "NONLINEAR_REDUCTIONS", "BILINEAR_OPS", "MATRIX_OPS", "CONSTANT_OPS"]

ELEMENTWISE_OPS = {"abs", "sqrt", "exp", "log", "log1p", "expm1", "sin", "cos", "tan",
                   "tanh", "sigmoid", "softplus", "relu", "max", "min", "clip",
                   "lt", "le", "gt", "ge", "eq", "ne", "and_", "or_", "not_"}
LINEAR_OPS = {"transpose", "index", "sum", "mean"}
NONLINEAR_REDUCTIONS = {"logsumexp", "max_over", "min_over"}
BILINEAR_OPS = {"matmul", "dot", "outer"}
MATRIX_OPS = {"inv", "cholesky", "logdet"}
CONSTANT_OPS = {"eye", "zeros", "ones"}
SHAPED = LINEAR_OPS | NONLINEAR_REDUCTIONS | BILINEAR_OPS | MATRIX_OPS | CONSTANT_OPS | {"solve"}
REDUCE_OPS = {"sum", "mean", "logsumexp", "max_over", "min_over"}
_CMP = {"<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne"}
_FUNCS: dict = {}


def F(name):
    f = _FUNCS.get(name)
    if f is None:
        f = _FUNCS[name] = sp.Function(name)
    return f


def _meta(shapes, out, extra=None):
    items = [sp.Tuple(*[sp.Integer(d) for d in s]) for s in shapes]
    items.append(sp.Tuple(*[sp.Integer(d) for d in out]))
    if extra is not None:
        items.append(sp.Integer(extra))
    return sp.Tuple(*items)


def _fname(e) -> Optional[str]:
    if isinstance(e, sp.core.function.AppliedUndef):
        return e.func.__name__
    return None


def data_args(e):
    """The data arguments of an opaque function application (without its shape tag)."""
    name = _fname(e)
    return e.args[:-1] if name in SHAPED else e.args


def meta_of(e):
    m = e.args[-1]
    shapes = [tuple(int(d) for d in t) for t in m.args if isinstance(t, sp.Tuple)]
    extras = [int(x) for x in m.args if not isinstance(x, sp.Tuple)]
    return shapes[:-1], shapes[-1], (extras[0] if extras else None)


# ------------------------------------------------------------------------------ building

def _number(value):
    if isinstance(value, int):
        return sp.Integer(value) if abs(value) < 2 ** 53 else sp.Float(float(value))
    if math.isinf(value):
        return sp.oo if value > 0 else -sp.oo
    if math.isnan(value):
        return sp.nan
    return sp.Float(value)


def _pow(a, b):
    if a.is_Number and b.is_Number:
        if (a.is_Rational and b.is_Integer and abs(int(b)) <= 64) or (a in (0, 1) and b.is_Rational):
            return a ** b
        try:
            fa, fb = float(a), float(b)
            with_np = fa ** fb
            if isinstance(with_np, complex):
                return sp.nan
            return _number(float(with_np))
        except OverflowError:
            return sp.oo
        except (ZeroDivisionError, ValueError, TypeError):
            return sp.zoo if float(b) < 0 else sp.nan
    if b.is_Number and b.is_Rational is False and float(b).is_integer() and abs(float(b)) < 64:
        b = sp.Integer(int(float(b)))            # h ** 2.0 is h ** 2
    return sp.Pow(a, b)


class _Builder:
    def __init__(self, chk: Checked, symbols: dict):
        self.chk = chk
        self.sym = symbols
        self.local_exprs: dict = {}
        self.subscripts: list = []            # id -> tuple of int | slice
        self._sub_ids: dict = {}

    def sub_id(self, spec) -> int:
        key = tuple(("s", s.start, s.stop, s.step) if isinstance(s, slice) else ("i", s)
                    for s in spec)
        if key not in self._sub_ids:
            self._sub_ids[key] = len(self.subscripts)
            self.subscripts.append(spec)
        return self._sub_ids[key]

    def shape(self, e):
        return self.chk.shapes[id(e)]

    def build(self, e):
        chk = self.chk
        if isinstance(e, A.Number):
            return _number(e.value)
        if isinstance(e, A.Name):
            if e.name == "t":
                return self.sym["t"]
            kind = chk.kinds[e.name]
            if kind == "dim":
                return sp.Integer(chk.dims[e.name])
            if kind == "local":
                return self.local_exprs[e.name]
            return self.sym[e.name]
        if isinstance(e, A.UnaryOp):
            a = self.build(e.operand)
            return F("not_")(a) if e.op == "not" else -a
        if isinstance(e, A.BinOp):
            a, b = self.build(e.left), self.build(e.right)
            op = e.op
            if op == "+":
                return a + b
            if op == "-":
                return a - b
            if op == "*":
                return a * b
            if op == "/":
                return a / b
            if op == "**":
                return _pow(a, b)
            if op == "@":
                return F("matmul")(a, b, _meta([self.shape(e.left), self.shape(e.right)],
                                               self.shape(e)))
            if op in _CMP:
                return F(_CMP[op])(a, b)
            if op == "and":
                return F("and_")(a, b)
            if op == "or":
                return F("or_")(a, b)
        if isinstance(e, A.Transpose):
            a = self.build(e.operand)
            s = self.shape(e.operand)
            if len(s) <= 1:
                return a
            return F("transpose")(a, _meta([s], self.shape(e)))
        if isinstance(e, A.Index):
            a = self.build(e.operand)
            spec = chk.subscripts[id(e)]
            return F("index")(a, _meta([self.shape(e.operand)], self.shape(e), self.sub_id(spec)))
        if isinstance(e, A.Call):
            name = e.func
            if name in CONSTANT_OPS:
                return F(name)(_meta([], chk.const_shapes[id(e)]))
            if is_reduction(e):
                a = self.build(e.args[0])
                ax = chk.axes[id(e)]
                op = {"max": "max_over", "min": "min_over"}.get(name, name)
                return F(op)(a, _meta([self.shape(e.args[0])], self.shape(e),
                                      -1 if ax is None else ax))
            args = [self.build(x) for x in e.args]
            if name in BILINEAR_OPS or name in MATRIX_OPS or name == "solve":
                return F(name)(*args, _meta([self.shape(x) for x in e.args], self.shape(e)))
            return F(name)(*args)
        raise TypeError(f"cannot build {type(e).__name__}")  # pragma: no cover


# ------------------------------------------------------------------------------ analysis

@dataclass(frozen=True)
class Info:
    deps: frozenset          # states read
    lin: bool                # affine in the states jointly
    elem: bool               # states read only through elementwise operations
    offender: Optional[object] = None   # first term that breaks affinity
    rational: bool = True    # affinity is broken only by products / powers / quotients


_CONST = Info(frozenset(), True, True)


def analyze(expr, states: frozenset, memo: Optional[dict] = None) -> Info:
    """Structural affinity / elementwise analysis of a sympy expression (memoised, DAG-linear)."""
    memo = {} if memo is None else memo
    stack = [(expr, False)]
    while stack:
        e, ready = stack.pop()
        if e in memo:
            continue
        kids = _kids(e)
        if not ready:
            stack.append((e, True))
            stack.extend((k, False) for k in kids if k not in memo)
            continue
        memo[e] = _combine(e, [memo[k] for k in kids], states)
    return memo[expr]


def _kids(e):
    if isinstance(e, (sp.Add, sp.Mul, sp.Pow)):
        return list(e.args)
    if _fname(e) is not None:
        return list(data_args(e))
    return []


def _combine(e, infos, states) -> Info:
    if isinstance(e, sp.Symbol):
        return Info(frozenset([e.name]), True, True) if e.name in states else _CONST
    if not infos:
        return _CONST
    deps = frozenset().union(*[i.deps for i in infos])
    elem_all = all(i.elem for i in infos)
    child_bad = next((i for i in infos if not i.lin), None)
    rational = all(i.rational for i in infos)
    if not deps:
        return _CONST
    if isinstance(e, sp.Add):
        lin = child_bad is None
        return Info(deps, lin, elem_all, None if lin else child_bad.offender, rational)
    if isinstance(e, (sp.Mul, sp.Pow)):
        if isinstance(e, sp.Mul):
            lin = child_bad is None and sum(1 for i in infos if i.deps) <= 1
        else:
            lin = False
        off = None if lin else (child_bad.offender if child_bad is not None else e)
        return Info(deps, lin, elem_all, off, rational)
    name = _fname(e)
    if name in ELEMENTWISE_OPS:
        return Info(deps, False, elem_all, child_bad.offender if child_bad else e, False)
    if name == "where":
        c, a, b = infos
        lin = not c.deps and a.lin and b.lin
        off = None if lin else (child_bad.offender if child_bad else e)
        return Info(deps, lin, elem_all, off, rational and not c.deps)
    if name in LINEAR_OPS:
        (a,) = infos
        return Info(deps, a.lin, False, a.offender, rational)
    if name in BILINEAR_OPS:
        a, b = infos
        lin = a.lin and b.lin and not (a.deps and b.deps)
        off = None if lin else (child_bad.offender if child_bad else e)
        return Info(deps, lin, False, off, rational)
    if name == "solve":
        a, b = infos
        lin = not a.deps and b.lin
        off = None if lin else (child_bad.offender if child_bad else e)
        return Info(deps, lin, False, off, rational and not a.deps)
    # matrix functions and anything unknown: nonlinear in whatever they read
    return Info(deps, False, False, child_bad.offender if child_bad else e, False)


# ------------------------------------------------------------------------------ printing

class _DSLPrinter(sp.printing.str.StrPrinter):
    def __init__(self, subscripts):
        super().__init__({"order": "none"})
        self.subscripts = subscripts

    def _atom(self, a):
        s = self._print(a)
        if isinstance(a, sp.Symbol) or (_fname(a) and _fname(a) not in ("matmul",)):
            return s
        return f"({s})"

    def _print_Function(self, e):
        name = _fname(e)
        if name is None:
            return super()._print_Function(e)
        args = [self._print(a) for a in data_args(e)]
        infix = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!=",
                 "and_": "and", "or_": "or"}
        if name == "matmul":
            return f"{self.parenthesize(data_args(e)[0], 60)}@{self.parenthesize(data_args(e)[1], 60)}"
        if name == "transpose":
            return f"{self._atom(data_args(e)[0])}.T"
        if name == "index":
            _, _, k = meta_of(e)
            return f"{self._atom(data_args(e)[0])}[{_subs_str(self.subscripts[k])}]"
        if name in infix:
            return f"({args[0]} {infix[name]} {args[1]})"
        if name == "not_":
            return f"(not {args[0]})"
        if name in REDUCE_OPS:
            _, _, ax = meta_of(e)
            shown = {"max_over": "max", "min_over": "min"}.get(name, name)
            axis = "" if ax < 0 else (f", axis={ax}" if shown != name else f", {ax}")
            return f"{shown}({args[0]}{axis})"
        if name in CONSTANT_OPS:
            _, out, _ = meta_of(e)
            return f"{name}({out[0] if name == 'eye' else ', '.join(map(str, out))})"
        return f"{name}({', '.join(args)})"


def _subs_str(spec):
    parts = []
    for s in spec:
        if isinstance(s, slice):
            p = f"{'' if s.start is None else s.start}:{'' if s.stop is None else s.stop}"
            if s.step is not None:
                p += f":{s.step}"
            parts.append(p)
        else:
            parts.append(str(s))
    return ", ".join(parts)


def _tree_size(e, limit):
    n, stack = 0, [e]
    while stack:
        x = stack.pop()
        n += 1
        if n > limit:
            return n
        stack.extend(x.args)
    return n


def dsl_str(e, subscripts=(), limit: int = 160) -> str:
    """A readable, DSL-like rendering of a sympy expression, cut at ``limit`` characters."""
    if _tree_size(e, 4000) > 4000:
        name = _fname(e)
        return f"{name}(...)" if name else "(a very large expression)"
    s = _DSLPrinter(subscripts).doprint(e)
    return s if len(s) <= limit else s[:limit - 3] + "..."


# ---------------------------------------------------------------------------------- result

@dataclass
class Symbolic:
    """The symbolic view of one checked recurrence."""
    symbols: dict                 # name -> sympy.Symbol (params, inputs, states, t)
    locals: dict                  # local name -> sympy expression (locals substituted)
    updates: dict                 # state -> sympy expression (sympy's automatic forms)
    classification: dict          # state -> (kind, reason): staged, on the AST as written
    reads: dict                   # state -> tuple of states its update reads
    stages: list                  # lists of states, in dependency order
    verdicts: dict                # state -> _structure.Staged
    output_classification: dict = field(default_factory=dict)   # output -> (kind, reason)
    subscripts: list = field(default_factory=list)

    @property
    def kinds(self) -> dict:
        return {s: k for s, (k, _) in self.classification.items()}

    def show(self, state: str) -> str:
        return dsl_str(self.updates[state], self.subscripts, limit=10 ** 6)


def _max_int_exponent(e) -> int:
    best, stack, seen = 0, [e], set()
    while stack:
        x = stack.pop()
        if x in seen:
            continue
        seen.add(x)
        if isinstance(x, sp.Pow) and x.exp.is_Number:
            try:
                best = max(best, abs(int(x.exp)) if x.exp.is_Integer else 0)
            except (TypeError, ValueError):
                pass
        stack.extend(x.args)
    return best


def _try_cancel(e):
    if _tree_size(e, 400) > 400 or _max_int_exponent(e) > 12:
        return None
    try:
        return sp.cancel(e)
    except Exception:  # noqa: BLE001 - simplification is best effort
        return None


_RANK = {"affine": 0, "diagonal": 1, "nonlinear": 2}


def _sympy_kind(info: Info, state: str) -> str:
    if info.lin:
        return "affine"
    if info.deps <= {state} and info.elem:
        return "diagonal"
    return "nonlinear"


def _hint(state: str, kind: str, expr, stage, subscripts) -> str:
    """A note when sympy finds the update, simplified, of a simpler kind than as written."""
    if kind == "affine":
        return ""
    states = frozenset(stage)
    info = analyze(expr, states)
    if not info.lin and info.rational:
        cancelled = _try_cancel(expr)
        if cancelled is not None and cancelled != expr:
            info2 = analyze(cancelled, states)
            if _RANK[_sympy_kind(info2, state)] < _RANK[_sympy_kind(info, state)]:
                expr, info = cancelled, info2
    simpler = _sympy_kind(info, state)
    if _RANK[simpler] >= _RANK[kind]:
        return ""
    return (f"; sympy simplifies {state}' to {dsl_str(expr, subscripts, 80)}, which is "
            f"{simpler}, but the formula is evaluated as written (the two differ where a "
            f"cancelled factor is zero or a term is not finite): write the simpler form for "
            f"the {simpler} plan")


def build_symbolic(chk: Checked) -> Symbolic:
    """Sympy expressions for every local and update; every state classified (structurally,
    staged) with its reason and, where sympy sees further, a hint."""
    symbols = {}
    for table in (chk.params, chk.inputs, chk.states):
        for n in table:
            symbols[n] = sp.Symbol(n)
    symbols["t"] = sp.Symbol("t")
    b = _Builder(chk, symbols)
    for name, expr in chk.locals.items():
        b.local_exprs[name] = b.build(expr)
    updates = {s: b.build(e) for s, e in chk.updates.items()}
    reads, stages, verdicts = classify_states(chk)
    order = list(chk.states)
    cls = {}
    for s in chk.states:
        v = verdicts[s]
        reason = describe(s, v, order, chk)
        cls[s] = (v.kind, reason + _hint(s, v.kind, updates[s], v.stage, b.subscripts))
    return Symbolic(symbols=symbols, locals=dict(b.local_exprs), updates=updates,
                    classification=cls, reads=reads, stages=stages, verdicts=verdicts,
                    output_classification=classify_outputs(chk), subscripts=b.subscripts)
