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
import string
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from . import _ast as A
from ._check import Checked
from ._functions import FUNCTIONS, REDUCTIONS, is_reduction
from ._structure import const_value, nonlinearity_origin
from ._symbolic import Symbolic
from ._sympy_print import subs_str

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
    return subs_str(spec) if spec else "()"


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
    for line in _module_head(chk, sym, dtype, plan_text, printer, names):
        w(line)
    _step(w, chk, printer, names)
    _lax_step(w, chk, printer, names)
    origin = nonlinearity_origin(chk)
    lines = {k: (stmt, tuple((a, b, n, origin(n)) for a, b, n in spans))
             for k, (stmt, spans) in w.map.items()}
    return w.text(), SourceMap(lines)


# The fixed part of the module.  A line that is only ``$name`` is replaced by the lines of
# the list ``name`` (none, one or many); other ``$name``s are substituted in place.
_MODULE_HEAD = '''\
"""$title.

step(h, x, p) -> dict: one step. h: states, x: inputs of this step, p: params (all
dicts keyed by the declared names; fill defaults with fill_params first).
lax_step(h, x, p) -> (dict, dict): the new states and the declared outputs, for
jax.lax.scan(lambda h, x: lax_step(h, x, p), h0, xs).
$step_index_doc
init(params=None) -> dict: the initial states.

$classification_doc
$plan_doc
"""

import math

import jax
import jax.numpy as jnp

NAME = $name
DIMS = $dims
DTYPE = $dtype
STATE_SHAPES = $states
INPUT_SHAPES = $inputs
PARAM_SHAPES = $params
OUTPUT_SHAPES = $outputs
USES_STEP_INDEX = $uses_t
CLASSIFICATION = $classification


def _out(v, shape):
    """A new state or output value: cast to DTYPE, broadcast to its shape."""
    return jnp.broadcast_to(jnp.asarray(v, DTYPE), shape)


def param_defaults():
    """The params' default values (None where the file gives none)."""
    return {
$param_defaults
    }


PARAM_DEFAULTS = param_defaults()


def fill_params(params=None):
    """The params with defaults filled in, cast to DTYPE; raises ValueError when one
    without default is missing or an unknown one is given."""
    given = dict(params or {})
    unknown = sorted(set(given) - set(PARAM_SHAPES))
    if unknown:
        raise ValueError(f'unknown params {unknown}; declared: {sorted(PARAM_SHAPES)}')
    p = {}
    for k in PARAM_SHAPES:
        v = given[k] if given.get(k) is not None else PARAM_DEFAULTS[k]
        if v is None:
            raise ValueError(f'param {k!r} has no default and was not given')
        p[k] = jnp.asarray(v, DTYPE)
    return p


def init(params=None):
    """The initial states (params: only those the initial values use are needed)."""
    p = dict(PARAM_DEFAULTS)
    p.update({k: v for k, v in (params or {}).items() if v is not None})
$init_params
    return {
$init_states
    }

'''

_STEP_INDEX_DOC = ['The recurrence uses the step index t: pass it as x["t"] (the caller supplies',
                   "jnp.arange(T) as an extra input leaf)."]


def _fill(template: str, **parts) -> list:
    """The lines of ``template`` with ``parts`` in (see the comment above ``_MODULE_HEAD``)."""
    inline = {k: v for k, v in parts.items() if not isinstance(v, list)}
    lines = []
    for line in template.split("\n"):
        if isinstance(parts.get(line[1:]), list) and line.startswith("$"):
            lines += parts[line[1:]]
        else:
            lines.append(string.Template(line).substitute(inline))
    return lines


def _module_head(chk, sym, dtype, plan_text, printer, names) -> list:
    """The docstring, imports, constants, ``_out``, ``param_defaults``, ``fill_params``
    and ``init``."""
    title = f"Generated by recur from the recurrence '{chk.name}'"
    if chk.filename:
        title += f" ({chk.filename})"
    classification = [f"{s}: {kind} -- {reason}"
                      for s, (kind, reason) in sym.classification.items()]
    classification += [f"output {y}: {kind} -- {reason}"
                       for y, (kind, reason) in sym.output_classification.items()]
    plan = [""] + plan_text.rstrip("\n").split("\n") if plan_text else []
    return _fill(
        _MODULE_HEAD, title=_doc_escape(title),
        step_index_doc=_STEP_INDEX_DOC if chk.uses_t else [],
        classification_doc=[_doc_escape(c) for c in classification],
        plan_doc=[_doc_escape(line) for line in plan],
        name=repr(chk.name), dims=repr(dict(chk.dims)),
        dtype="jnp.zeros(()).dtype  # JAX's default float" if dtype is None
        else f"jnp.dtype({np.dtype(dtype).name!r})",
        states=repr(dict(chk.states)), inputs=repr(dict(chk.inputs)),
        params=repr(dict(chk.params)), outputs=repr(dict(chk.output_shapes)),
        uses_t=repr(bool(chk.uses_t)), classification=repr(dict(sym.classification)),
        param_defaults=_param_default_lines(chk, printer),
        init_params=_init_param_lines(chk, names),
        init_states=[f"        {s!r}: _out({'0.0' if v is None else printer.code(v).text}, "
                     f"{tuple(shape)!r})," for s, v, shape in
                     ((s, chk.state_inits[s], shape) for s, shape in chk.states.items())])


def _param_default_lines(chk, printer) -> list:
    lines = []
    for n, shape in chk.params.items():
        v = chk.param_values[n]
        code = "None" if v is None else f"_out({printer.code(v).text}, {tuple(shape)!r})"
        lines.append(f"        {n!r}: {code},")
    return lines


def _init_param_lines(chk, names) -> list:
    """``init``'s reads of the params the initial states use (an error for one without a
    value)."""
    used: set = set()
    for v in chk.state_inits.values():
        if v is not None:
            _names_used(v, used)
    lines = []
    for n in chk.params:
        if n in used:
            msg = f"param {n!r} is needed by the initial states and has no value"
            lines += [f"    if p.get({n!r}) is None:", f"        raise ValueError({msg!r})",
                      f"    {names[n]} = jnp.asarray(p[{n!r}], DTYPE)"]
    return lines


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
