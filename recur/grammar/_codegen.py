"""Code generation: a checked recurrence -> the text of a standalone JAX module.

The module (imports: ``math``, ``jax``, ``jax.numpy``) defines ``step(h, x, p)``,
``lax_step(h, x, p) -> (h', y)`` (the new states and the declared outputs),
``init(params=None)``, ``param_defaults()``, ``PARAM_DEFAULTS``, ``fill_params``, the
shapes and the dtype. ``load_model`` executes this very text, so the compiled and the
loaded paths are the same code.

Every expression is generated from the AST as written: one variable per local
definition, the operations in the file's order, nothing simplified (DSL.md: the formula is
evaluated as written). Each generated line that evaluates a ``.rec`` expression is
recorded in a :class:`SourceMap` with the column span of every operation, so that a
location in the generated code (what JAX's source info gives) leads back to the ``.rec``
line and column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from . import _ast as A
from ._check import Checked
from ._functions import FUNCTIONS, REDUCTIONS, is_reduction
from ._structure import const_value, nonlinearity_origin
from ._symbolic import Symbolic, _subs_str

__all__ = ["generate", "SourceMap"]

# Python operator precedence (the DSL's is the same)
_PREC = {"or": 1, "and": 2, "not": 3, "<": 4, "<=": 4, ">": 4, ">=": 4, "==": 4, "!=": 4,
         "+": 5, "-": 5, "*": 6, "/": 6, "@": 6, "neg": 7, "**": 8}
_ATOM = 9


class _Frag(NamedTuple):
    """Generated code for an expression: its text, precedence, and the spans
    ``(start, end, AST node)`` of every operation within the text."""
    text: str
    prec: int
    spans: tuple = ()


def _cat(prec, *parts, node=None) -> _Frag:
    """Concatenate strings and fragments, shifting the fragments' spans; ``node`` spans
    the whole result."""
    out, spans, pos = [], [], 0
    for p in parts:
        if isinstance(p, str):
            out.append(p)
            pos += len(p)
        else:
            out.append(p.text)
            spans += [(a + pos, b + pos, n) for a, b, n in p.spans]
            pos += len(p.text)
    if node is not None:
        spans.append((0, pos, node))
    return _Frag("".join(out), prec, tuple(spans))


def _paren(frag: _Frag, need: int) -> _Frag:
    return _cat(_ATOM, "(", frag, ")") if frag.prec < need else frag


def _float_lit(v: float) -> _Frag:
    if math.isnan(v):
        return _Frag("math.nan", _ATOM)
    if math.isinf(v):
        return _Frag("math.inf", _ATOM) if v > 0 else _Frag("-math.inf", 7)
    s = repr(float(v))
    return _Frag(s, 7 if s.startswith("-") else _ATOM)


def _subs_code(spec):
    return _subs_str(spec) if spec else "()"


# ------------------------------------------------------------------------------ AST -> code

class _AstPrinter:
    def __init__(self, chk: Checked, names: dict):
        self.chk = chk
        self.names = names         # DSL name (h' for a new state) -> python variable
        self._consts: dict = {}

    def const(self, e) -> Optional[float]:
        """The value of a subexpression made of numbers and dims (folded as NumPy would)."""
        return const_value(self.chk, e, self._consts)

    def code(self, e) -> _Frag:
        c = self.const(e)
        if c is not None:
            return _cat(_float_lit(c).prec, _float_lit(c), node=e)
        if isinstance(e, A.Name):
            return _Frag(self.names[e.name], _ATOM)
        if isinstance(e, A.Primed):
            return _Frag(self.names[e.name + "'"], _ATOM)
        if isinstance(e, A.UnaryOp):
            inner = self.code(e.operand)
            if e.op == "not":
                return _cat(_ATOM, "jnp.logical_not(", inner, ")", node=e)
            s = _paren(inner, 7)
            return _cat(7, "- " if s.text.startswith("-") else "-", s, node=e)
        if isinstance(e, A.BinOp):
            return self.binop(e)
        if isinstance(e, A.Transpose):
            return _cat(_ATOM, "jnp.transpose(", self.code(e.operand), ")", node=e)
        if isinstance(e, A.Index):
            spec = self.chk.subscripts[id(e)]
            return _cat(_ATOM, _paren(self.code(e.operand), _ATOM), f"[{_subs_code(spec)}]",
                        node=e)
        if isinstance(e, A.Call):
            return self.call(e)
        raise TypeError(type(e).__name__)  # pragma: no cover

    def binop(self, e) -> _Frag:
        op = e.op
        left, right = self.code(e.left), self.code(e.right)
        if op in ("and", "or"):
            return _cat(_ATOM, f"jnp.logical_{op}(", left, ", ", right, ")", node=e)
        p = _PREC[op]
        if op == "**":
            rc = self.const(e.right)
            if rc == 0.5:       # NumPy's array power reads ** 0.5 as sqrt (-inf -> nan)
                return _cat(_ATOM, "jnp.sqrt(", left, ")", node=e)
            if rc is not None and float(rc).is_integer() and abs(rc) <= 2 ** 31:
                right = _cat(7 if rc < 0 else _ATOM, str(int(rc)), node=e.right)
            return _cat(p, _paren(left, p + 1), " ** ", _paren(right, 7), node=e)
        need_left = p + 1 if p == 4 else p
        return _cat(p, _paren(left, need_left), f" {op} ", _paren(right, p + 1), node=e)

    def call(self, e) -> _Frag:
        name = e.func
        chk = self.chk
        if name == "eye":
            return _cat(_ATOM, f"jnp.eye({chk.const_shapes[id(e)][0]}, dtype=DTYPE)", node=e)
        if name in ("zeros", "ones"):
            return _cat(_ATOM, f"jnp.{name}({chk.const_shapes[id(e)]!r}, DTYPE)", node=e)
        if is_reduction(e):
            ax = chk.axes[id(e)]
            axis = "" if ax is None else f", axis={ax}"
            return _cat(_ATOM, f"{REDUCTIONS[name][0]}(", self.code(e.args[0]), f"{axis})",
                        node=e)
        parts: list = []
        for i, a in enumerate(e.args):
            parts += ([", "] if i else []) + [self.code(a)]
        if name == "logdet":
            return _cat(_ATOM, "jnp.linalg.slogdet(", *parts, ")[1]", node=e)
        return _cat(_ATOM, f"{FUNCTIONS[name].jax}(", *parts, ")", node=e)


# ------------------------------------------------------------------------------ source map

# JAX primitives an operation of the DSL may emit, to tell apart operations that start at
# the same generated column (``tanh(h) * h``: the product and the tanh)
_OP_PRIMITIVES = {
    "+": {"add"}, "-": {"sub", "neg"}, "*": {"mul"}, "/": {"div"}, "@": {"dot_general"},
    "**": {"pow", "integer_pow", "sqrt", "square", "rsqrt", "exp", "log"},
    "<": {"lt"}, "<=": {"le"}, ">": {"gt"}, ">=": {"ge"}, "==": {"eq"}, "!=": {"ne"},
    "and": {"and"}, "or": {"or"}, "not": {"not"},
}
_CALL_PRIMITIVES = {
    "sigmoid": {"logistic"}, "softplus": {"logaddexp", "log1p", "exp", "max"},
    "relu": {"max", "custom_jvp_call"}, "max": {"max", "reduce_max"},
    "min": {"min", "reduce_min"}, "clip": {"clamp", "max", "min"}, "where": {"select_n"},
    "sum": {"reduce_sum"}, "mean": {"reduce_sum", "div"},
    "logsumexp": {"reduce_max", "reduce_sum", "exp", "log", "sub", "stop_gradient"},
    "inv": {"solve", "lu", "triangular_solve", "custom_linear_solve", "lu_pivots_to_permutation"},
    "solve": {"lu", "triangular_solve", "custom_linear_solve", "lu_pivots_to_permutation"},
    "cholesky": {"cholesky"}, "logdet": {"lu", "slogdet", "log", "abs", "reduce_sum"},
    "dot": {"dot_general"}, "outer": {"mul", "dot_general"},
}


def _emits(node, primitive: str) -> bool:
    if isinstance(node, (A.BinOp, A.UnaryOp)):
        return primitive in _OP_PRIMITIVES.get(node.op, ())
    if isinstance(node, A.Call):
        return primitive == node.func or primitive in _CALL_PRIMITIVES.get(node.func, ())
    if isinstance(node, A.Transpose):
        return primitive == "transpose"
    if isinstance(node, A.Index):
        return primitive in ("slice", "gather", "squeeze", "dynamic_slice", "reshape", "rev")
    return False


@dataclass(frozen=True)
class SourceMap:
    """Generated line (1-based) -> ``(statement, spans)``: the ``.rec`` statement the line
    evaluates and ``(start, end, AST node, origin)`` of its operations (0-based columns;
    ``origin``: the operation itself breaks affinity in the states)."""
    lines: dict

    def locate(self, line: int, column: Optional[int] = None,
               primitive: Optional[str] = None):
        """The ``.rec`` node behind a generated location: among the operations starting at
        ``column`` (JAX's start column, 0-based; nested operations may share it), those
        that can emit ``primitive``, preferring one that breaks affinity, innermost first;
        else the statement. ``None`` when the line does not evaluate ``.rec`` code."""
        entry = self.lines.get(line)
        if entry is None:
            return None
        stmt, spans = entry
        if column is None:
            return stmt
        here = [s for s in spans if s[0] == column]
        if primitive:
            here = [s for s in here if _emits(s[2], primitive)] or here
        here.sort(key=lambda s: (not s[3], s[1] - s[0]))
        return here[0][2] if here else stmt


class _Writer:
    """Lines of the module, and the source map of those that evaluate ``.rec`` code."""

    def __init__(self):
        self.lines: list = []
        self.map: dict = {}

    def __call__(self, text: str = ""):
        self.lines.append(text)

    def expr(self, prefix: str, frag: _Frag, suffix: str, stmt):
        self.lines.append(prefix + frag.text + suffix)
        shift = len(prefix)
        self.map[len(self.lines)] = (stmt, tuple((a + shift, b + shift, n)
                                                 for a, b, n in frag.spans))

    def text(self) -> str:
        return "\n".join(self.lines)


# ------------------------------------------------------------------------------- generate

def _pyname(kind, name):
    return {"state": "s_", "input": "x_", "param": "p_", "local": "v_"}[kind] + name


def _doc_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def _names_used(e, out: set):
    """Add the names (``h'`` for a new state) an expression reads to ``out``."""
    stack = [e]
    while stack:
        x = stack.pop()
        if x is None:
            continue
        if isinstance(x, A.Name):
            out.add(x.name)
        elif isinstance(x, A.Primed):
            out.add(x.name + "'")
        elif isinstance(x, A.UnaryOp):
            stack.append(x.operand)
        elif isinstance(x, A.BinOp):
            stack += [x.left, x.right]
        elif isinstance(x, A.Transpose):
            stack.append(x.operand)
        elif isinstance(x, A.Index):
            stack.append(x.operand)
        elif isinstance(x, A.Call):
            stack += list(x.args) + [k.value for k in x.kwargs]
    return out


def _locals_needed(chk: Checked, exprs) -> set:
    """The locals the expressions read, directly or through other locals."""
    needed: set = set()
    for e in exprs:
        _names_used(e, needed)
    todo = [n for n in needed if chk.kinds.get(n) == "local"]
    while todo:
        n = todo.pop()
        new: set = set()
        _names_used(chk.locals[n], new)
        for m in new - needed:
            needed.add(m)
            if chk.kinds.get(m) == "local":
                todo.append(m)
    return needed


def generate(chk: Checked, sym: Symbolic, *, dtype=None,
             plan_text: Optional[str] = None) -> tuple:
    """Return ``(source, source_map)``: the module text and its :class:`SourceMap`."""
    names = {n: _pyname(k, n) for n, k in chk.kinds.items()
             if k in ("state", "input", "param", "local")}
    names.update({s + "'": "n_" + s for s in chk.states})
    names["t"] = "t_"
    printer = _AstPrinter(chk, names)
    w = _Writer()
    _header(w, chk, sym, dtype, plan_text)
    _helpers(w)
    _params_and_init(w, chk, printer, names)
    _step(w, chk, printer, names)
    _lax_step(w, chk, printer, names)
    origin = nonlinearity_origin(chk)
    lines = {k: (stmt, tuple((a, b, n, origin(n)) for a, b, n in spans))
             for k, (stmt, spans) in w.map.items()}
    return w.text(), SourceMap(lines)


def _header(w, chk, sym, dtype, plan_text):
    title = f"Generated by recur from the recurrence '{chk.name}'"
    if chk.filename:
        title += f" ({chk.filename})"
    w('"""' + _doc_escape(title) + ".")
    w("")
    w("step(h, x, p) -> dict: one step. h: states, x: inputs of this step, p: params (all")
    w("dicts keyed by the declared names; fill defaults with fill_params first).")
    w("lax_step(h, x, p) -> (dict, dict): the new states and the declared outputs, for")
    w("jax.lax.scan(lambda h, x: lax_step(h, x, p), h0, xs).")
    if chk.uses_t:
        w('The recurrence uses the step index t: pass it as x["t"] (the caller supplies')
        w("jnp.arange(T) as an extra input leaf).")
    w("init(params=None) -> dict: the initial states.")
    w("")
    for s, (kind, reason) in sym.classification.items():
        w(_doc_escape(f"{s}: {kind} -- {reason}"))
    for y, (kind, reason) in sym.output_classification.items():
        w(_doc_escape(f"output {y}: {kind} -- {reason}"))
    if plan_text:
        w("")
        w(_doc_escape(plan_text.rstrip("\n")))
    w('"""')
    w("")
    w("import math")
    w("")
    w("import jax")
    w("import jax.numpy as jnp")
    w("")
    w(f"NAME = {chk.name!r}")
    w(f"DIMS = {dict(chk.dims)!r}")
    if dtype is None:
        w("DTYPE = jnp.zeros(()).dtype  # JAX's default float")
    else:
        w(f"DTYPE = jnp.dtype({np.dtype(dtype).name!r})")
    w(f"STATE_SHAPES = {dict(chk.states)!r}")
    w(f"INPUT_SHAPES = {dict(chk.inputs)!r}")
    w(f"PARAM_SHAPES = {dict(chk.params)!r}")
    w(f"OUTPUT_SHAPES = {dict(chk.output_shapes)!r}")
    w(f"USES_STEP_INDEX = {bool(chk.uses_t)!r}")
    w(f"CLASSIFICATION = {dict(sym.classification)!r}")
    w("")
    w("")


def _helpers(w):
    w("def _out(v, shape):")
    w('    """A new state or output value: cast to DTYPE, broadcast to its shape."""')
    w("    return jnp.broadcast_to(jnp.asarray(v, DTYPE), shape)")
    w("")
    w("")


def _params_and_init(w, chk, printer, names):
    w("def param_defaults():")
    w('    """The params\' default values (None where the file gives none)."""')
    w("    return {")
    for n, shape in chk.params.items():
        v = chk.param_values[n]
        code = "None" if v is None else f"_out({printer.code(v).text}, {tuple(shape)!r})"
        w(f"        {n!r}: {code},")
    w("    }")
    w("")
    w("")
    w("PARAM_DEFAULTS = param_defaults()")
    w("")
    w("")
    w("def fill_params(params=None):")
    w('    """The params with defaults filled in, cast to DTYPE; raises ValueError when one')
    w('    without default is missing or an unknown one is given."""')
    w("    given = dict(params or {})")
    w("    unknown = sorted(set(given) - set(PARAM_SHAPES))")
    w("    if unknown:")
    w("        raise ValueError(f'unknown params {unknown}; declared: {sorted(PARAM_SHAPES)}')")
    w("    p = {}")
    w("    for k in PARAM_SHAPES:")
    w("        v = given[k] if given.get(k) is not None else PARAM_DEFAULTS[k]")
    w("        if v is None:")
    w("            raise ValueError(f'param {k!r} has no default and was not given')")
    w("        p[k] = jnp.asarray(v, DTYPE)")
    w("    return p")
    w("")
    w("")
    w("def init(params=None):")
    w('    """The initial states (params: only those the initial values use are needed)."""')
    w("    p = dict(PARAM_DEFAULTS)")
    w("    p.update({k: v for k, v in (params or {}).items() if v is not None})")
    used_init: set = set()
    for v in chk.state_inits.values():
        if v is not None:
            _names_used(v, used_init)
    for n in chk.params:
        if n in used_init:
            w(f"    if p.get({n!r}) is None:")
            msg = f"param {n!r} is needed by the initial states and has no value"
            w(f"        raise ValueError({msg!r})")
            w(f"    {names[n]} = jnp.asarray(p[{n!r}], DTYPE)")
    w("    return {")
    for s, shape in chk.states.items():
        v = chk.state_inits[s]
        code = "0.0" if v is None else printer.code(v).text
        w(f"        {s!r}: _out({code}, {tuple(shape)!r}),")
    w("    }")
    w("")
    w("")


def _reads(w, chk, names):
    """The body's first lines: states, inputs, step index, params and locals it needs."""
    for s in chk.states:
        w(f"    {names[s]} = h[{s!r}]")
    for i in chk.inputs:
        w(f"    {names[i]} = x[{i!r}]")
    if chk.uses_t:
        w("    if x is None or 't' not in x:")
        w("        raise KeyError('this recurrence uses the step index t: pass x[\"t\"] = "
          "jnp.arange(T) among the inputs')")
        w("    t_ = jnp.asarray(x['t'], DTYPE)")
    for n in chk.params:
        w(f"    {names[n]} = p[{n!r}]")


def _local_lines(w, chk, printer, names, needed):
    decl = chk.decl_nodes
    for n, e in chk.locals.items():
        if n in needed:
            w.expr(f"    {names[n]} = ", printer.code(e), "", decl[n])


def _step(w, chk, printer, names):
    w("def step(h, x, p):")
    w('    """One step: new states from states h, this step\'s inputs x, params p."""')
    needed = _locals_needed(chk, chk.updates.values())
    _reads(w, chk, names)
    _local_lines(w, chk, printer, names, needed)
    w("    return {")
    for s, shape in chk.states.items():
        w.expr(f"        {s!r}: _out(", printer.code(chk.updates[s]), f", {tuple(shape)!r}),",
               _update_node(chk, s))
    w("    }")
    w("")
    w("")


def _lax_step(w, chk, printer, names):
    w("def lax_step(h, x, p):")
    w('    """One step with outputs: (new states, outputs), outputs computed from the')
    w("    previous states h, this step's inputs x, params p, and the new states (h').\"\"\"")
    needed = _locals_needed(chk, list(chk.updates.values()) + list(chk.outputs.values()))
    _reads(w, chk, names)
    _local_lines(w, chk, printer, names, needed)
    for s, shape in chk.states.items():
        w.expr(f"    {names[s + chr(39)]} = _out(", printer.code(chk.updates[s]),
               f", {tuple(shape)!r})", _update_node(chk, s))
    new = ", ".join(f"{s!r}: {names[s + chr(39)]}" for s in chk.states)
    w("    outputs = {}")
    for y, e in chk.outputs.items():
        w.expr(f"    outputs[{y!r}] = _out(", printer.code(e),
               f", {tuple(chk.output_shapes[y])!r})", chk.decl_nodes[y])
    w(f"    return {{{new}}}, outputs")
    w("")


def _update_node(chk, state):
    return chk.update_stmts.get(state, chk.updates[state])
