"""Code generation: a checked recurrence -> the text of a standalone JAX module.

The module (imports: ``math``, ``jax``, ``jax.numpy``) defines ``step(h, x, p)``,
``init(params=None)``, ``param_defaults()``, ``PARAM_DEFAULTS``, ``fill_params``, the
shapes and the dtype. ``load_model`` executes this very text, so the compiled and the
loaded paths are the same code.

Updates are generated from the AST (readable: one variable per local definition) unless
the symbolic pass classified a different form than the AST's own structure (a
simplification such as ``(h**2 - 1)/(h - 1) -> h + 1``, or sympy's automatic
``h - h -> 0``); such an update is generated from the sympy form that was classified, so
that a jaxpr analysis of the generated step agrees with the symbolic verdict.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import sympy as sp

from . import _ast as A
from ._check import Checked
from ._functions import ELEMENTWISE_UNARY, FUNCTIONS
from ._symbolic import (Info, Symbolic, _fname, _subs_str, classify, data_args,
                        meta_of, sym_shape, SHAPED)

__all__ = ["generate"]

# Python operator precedence (the DSL's is the same)
_PREC = {"or": 1, "and": 2, "not": 3, "<": 4, "<=": 4, ">": 4, ">=": 4, "==": 4, "!=": 4,
         "+": 5, "-": 5, "*": 6, "/": 6, "@": 6, "neg": 7, "**": 8}
_ATOM = 9


def _float_lit(v: float):
    if math.isnan(v):
        return "math.nan", _ATOM
    if math.isinf(v):
        return ("math.inf", _ATOM) if v > 0 else ("-math.inf", 7)
    s = repr(float(v))
    return (s, 7) if s.startswith("-") else (s, _ATOM)


def _int_lit(v: int):
    return (str(v), 7) if v < 0 else (str(v), _ATOM)


def _paren(code_prec, need):
    code, prec = code_prec
    return f"({code})" if prec < need else code


def _subs_code(spec):
    return _subs_str(spec) if spec else "()"


# ------------------------------------------------------------------------------ AST -> code

class _AstPrinter:
    def __init__(self, chk: Checked, names: dict):
        self.chk = chk
        self.names = names         # DSL name -> python variable
        self._consts: dict = {}

    def const(self, e) -> Optional[float]:
        k = id(e)
        if k in self._consts:
            return self._consts[k]
        v = None
        if isinstance(e, A.Number):
            try:
                v = float(e.value)
            except OverflowError:
                v = math.inf
        elif isinstance(e, A.Name) and self.chk.kinds.get(e.name) == "dim":
            v = float(self.chk.dims[e.name])
        elif isinstance(e, A.UnaryOp) and e.op == "-":
            a = self.const(e.operand)
            v = None if a is None else -a
        elif isinstance(e, A.BinOp) and e.op in ("+", "-", "*", "/", "**"):
            a, b = self.const(e.left), self.const(e.right)
            if a is not None and b is not None:
                with np.errstate(all="ignore"):
                    x, y = np.float64(a), np.float64(b)
                    r = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide,
                         "**": np.power}[e.op](x, y)
                v = float(r)
        self._consts[k] = v
        return v

    def code(self, e) -> tuple:
        c = self.const(e)
        if c is not None:
            return _float_lit(c)
        if isinstance(e, A.Name):
            return self.names[e.name], _ATOM
        if isinstance(e, A.UnaryOp):
            inner = self.code(e.operand)
            if e.op == "not":
                return f"jnp.logical_not({inner[0]})", _ATOM
            s = _paren(inner, 7)
            return ("- " + s if s.startswith("-") else "-" + s), 7
        if isinstance(e, A.BinOp):
            op = e.op
            if op in ("and", "or"):
                return f"jnp.logical_{op}({self.code(e.left)[0]}, {self.code(e.right)[0]})", _ATOM
            p = _PREC[op]
            left = self.code(e.left)
            if op == "**":
                rc = self.const(e.right)
                if rc is not None and float(rc).is_integer() and abs(rc) <= 2 ** 31:
                    right = _int_lit(int(rc))
                else:
                    right = self.code(e.right)
                return f"{_paren(left, p + 1)} ** {_paren(right, 7)}", p
            need_r = p + 1
            return f"{_paren(left, p + (1 if p == 4 else 0))} {op} {_paren(self.code(e.right), need_r)}", p
        if isinstance(e, A.Transpose):
            return f"jnp.transpose({self.code(e.operand)[0]})", _ATOM
        if isinstance(e, A.Index):
            spec = self.chk.subscripts[id(e)]
            return f"{_paren(self.code(e.operand), _ATOM)}[{_subs_code(spec)}]", _ATOM
        if isinstance(e, A.Call):
            return self.call(e), _ATOM
        raise TypeError(type(e).__name__)  # pragma: no cover

    def call(self, e):
        name = e.func
        spec = FUNCTIONS[name]
        if name == "eye":
            return f"jnp.eye({self.chk.const_shapes[id(e)][0]}, dtype=DTYPE)"
        if name in ("zeros", "ones"):
            return f"jnp.{name}({self.chk.const_shapes[id(e)]!r}, DTYPE)"
        if name in ("sum", "mean"):
            ax = self.chk.axes[id(e)]
            a = self.code(e.args[0])[0]
            return f"jnp.{name}({a})" if ax is None else f"jnp.{name}({a}, axis={ax})"
        args = ", ".join(self.code(a)[0] for a in e.args)
        if name == "logdet":
            return f"_logdet({args})"
        return f"{spec.jax}({args})"


# ---------------------------------------------------------------------------- sympy -> code

_SYM_JAX = dict(ELEMENTWISE_UNARY)
_SYM_JAX.update({"max": "jnp.maximum", "min": "jnp.minimum", "clip": "jnp.clip",
                 "where": "jnp.where", "and_": "jnp.logical_and", "or_": "jnp.logical_or",
                 "not_": "jnp.logical_not", "dot": "jnp.dot", "outer": "jnp.outer",
                 "inv": "jnp.linalg.inv", "cholesky": "jnp.linalg.cholesky",
                 "logdet": "_logdet", "solve": "jnp.linalg.solve"})
_SYM_CMP = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


class _SymPrinter:
    """Prints sympy expressions as JAX code, naming shared and deep subexpressions."""

    def __init__(self, names: dict, symbol_shapes: dict, subscripts, lines: list, prefix="_e"):
        self.names = names
        self.shapes = symbol_shapes
        self.subscripts = subscripts
        self.lines = lines
        self.prefix = prefix
        self.memo: dict = {}
        self.shape_memo: dict = {}
        self.count = 0
        self.uses: dict = {}

    def count_uses(self, e):
        stack = [e]
        while stack:
            x = stack.pop()
            self.uses[x] = self.uses.get(x, 0) + 1
            if self.uses[x] == 1:
                stack.extend(x.args)

    def shape(self, e):
        return sym_shape(e, self.shapes, self.shape_memo)

    def code(self, e) -> str:
        return self._code(e)[0]

    def _code(self, e):
        if e in self.memo:
            return self.memo[e]
        out = self._print(e)
        code, prec, depth = out
        if not isinstance(e, (sp.Symbol, sp.Number)) and not e.is_number and \
                (self.uses.get(e, 0) > 1 or depth > 25):
            var = f"{self.prefix}{self.count}"
            self.count += 1
            self.lines.append(f"{var} = {code}")
            out = (var, _ATOM, 1)
        self.memo[e] = out
        return out

    def _num(self, e):
        if e is sp.zoo or e is sp.oo:
            return ("math.inf", _ATOM, 1)
        if e is -sp.oo:
            return ("-math.inf", 7, 1)
        if e is sp.nan:
            return ("math.nan", _ATOM, 1)
        if e.is_Integer and abs(int(e)) < 2 ** 53:
            c, p = _float_lit(float(int(e)))
            return (c, p, 1)
        try:
            v = complex(sp.N(e, 17))
            val = v.real if v.imag == 0 else math.nan
        except (TypeError, ValueError, OverflowError):
            val = math.nan
        c, p = _float_lit(val)
        return (c, p, 1)

    def _print(self, e):
        if isinstance(e, sp.Symbol):
            return (self.names[e.name], _ATOM, 1)
        if e.is_number and not e.atoms(sp.core.function.AppliedUndef):
            return self._num(e)
        if isinstance(e, sp.Add):
            parts = [self._code(a) for a in e.args]
            depth = 1 + max(p[2] for p in parts)
            s = " + ".join(_paren(p[:2], 5) for p in parts)
            return (s, 5, depth)
        if isinstance(e, sp.Mul):
            num, den = [], []
            for f in e.args:
                if isinstance(f, sp.Pow) and f.exp.is_Number and f.exp < 0:
                    den.append(sp.Pow(f.base, -f.exp) if f.exp != -1 else f.base)
                else:
                    num.append(f)
            nums = [self._code(a) for a in num]
            dens = [self._code(a) for a in den]
            depth = 1 + max([p[2] for p in nums + dens] or [0])
            if nums and num[0] == -1 and len(nums) > 1:
                rest = " * ".join(_paren(p[:2], 7) for p in nums[1:])
                s = "-" + (rest if len(nums) == 2 else f"({rest})")
            else:
                s = " * ".join(_paren(p[:2], 7) for p in nums) or "1.0"
            if dens:
                d = " * ".join(_paren(p[:2], 7) for p in dens)
                s = f"({s}) / ({d})" if len(dens) > 1 else f"({s}) / {_paren(dens[0][:2], 7)}"
            return (s, 6, depth)
        if isinstance(e, sp.Pow):
            base = self._code(e.base)
            if e.exp == sp.Rational(1, 2):
                return (f"jnp.sqrt({base[0]})", _ATOM, base[2] + 1)
            if e.exp.is_Integer:
                return (f"{_paren(base[:2], 9)} ** {_int_lit(int(e.exp))[0]}", 8, base[2] + 1)
            ex = self._code(e.exp)
            return (f"{_paren(base[:2], 9)} ** {_paren(ex[:2], 7)}", 8,
                    1 + max(base[2], ex[2]))
        name = _fname(e)
        if name is None:                                  # pragma: no cover
            raise TypeError(f"cannot generate code for {e!r}")
        if name in SHAPED:
            in_shapes, out_shape, extra = meta_of(e)
            args = []
            depth = 1
            for a, s in zip(data_args(e), in_shapes):
                c = self._code(a)
                depth = max(depth, c[2] + 1)
                if tuple(self.shape(a)) != tuple(s) or a.is_number:
                    args.append(f"_bc({c[0]}, {tuple(s)!r})")
                else:
                    args.append(c[0])
            if name == "matmul":
                return (f"jnp.matmul({args[0]}, {args[1]})", _ATOM, depth)
            if name == "transpose":
                return (f"jnp.transpose({args[0]})", _ATOM, depth)
            if name == "index":
                a = args[0]
                return (f"{a}[{_subs_code(self.subscripts[extra])}]", _ATOM, depth)
            if name in ("sum", "mean"):
                ax = "" if extra < 0 else f", axis={extra}"
                return (f"jnp.{name}({args[0]}{ax})", _ATOM, depth)
            if name == "eye":
                return (f"jnp.eye({out_shape[0]}, dtype=DTYPE)", _ATOM, 1)
            if name in ("zeros", "ones"):
                return (f"jnp.{name}({out_shape!r}, DTYPE)", _ATOM, 1)
            return (f"{_SYM_JAX[name]}({', '.join(args)})", _ATOM, depth)
        parts = [self._code(a) for a in e.args]
        depth = 1 + max([p[2] for p in parts] or [0])
        if name in _SYM_CMP:
            return (f"{_paren(parts[0][:2], 5)} {_SYM_CMP[name]} {_paren(parts[1][:2], 5)}", 4,
                    depth)
        return (f"{_SYM_JAX[name]}({', '.join(p[0] for p in parts)})", _ATOM, depth)


# -------------------------------------------------------------------------- AST structure

def _ast_info(chk: Checked, e, memo: dict, states: frozenset) -> Info:
    """The same structural analysis as the symbolic pass, on the AST as written."""
    k = id(e)
    if k in memo:
        return memo[k]
    C = Info(frozenset(), True, True)

    def get(x):
        return _ast_info(chk, x, memo, states)

    if isinstance(e, A.Number):
        r = C
    elif isinstance(e, A.Name):
        kind = chk.kinds.get(e.name)
        if kind == "state":
            r = Info(frozenset([e.name]), True, True)
        elif kind == "local":
            r = get(chk.locals[e.name])
        else:
            r = C
    elif isinstance(e, A.UnaryOp):
        a = get(e.operand)
        r = a if e.op == "-" else Info(a.deps, not a.deps, a.elem)
    elif isinstance(e, A.BinOp):
        a, b = get(e.left), get(e.right)
        deps = a.deps | b.deps
        elem = a.elem and b.elem
        if e.op in ("+", "-"):
            lin = a.lin and b.lin
        elif e.op == "*":
            lin = a.lin and b.lin and not (a.deps and b.deps)
        elif e.op == "/":
            lin = a.lin and not b.deps
        elif e.op == "@":
            lin = a.lin and b.lin and not (a.deps and b.deps)
            elem = not deps
        else:
            lin = not deps
        r = Info(deps, lin, elem)
    elif isinstance(e, A.Transpose):
        a = get(e.operand)
        r = Info(a.deps, a.lin, a.elem if len(chk.shapes[id(e.operand)]) <= 1 else not a.deps)
    elif isinstance(e, A.Index):
        a = get(e.operand)
        r = Info(a.deps, a.lin, not a.deps)
    elif isinstance(e, A.Call):
        name = e.func
        cat = FUNCTIONS[name].category
        if cat == "constant":
            r = C
        else:
            infos = [get(x) for x in (e.args[:1] if cat == "reduce" else e.args)]
            deps = frozenset().union(*[i.deps for i in infos])
            elem = all(i.elem for i in infos)
            if cat == "elementwise":
                r = Info(deps, not deps, elem)
            elif cat == "where":
                c, x, y = infos
                r = Info(deps, not c.deps and x.lin and y.lin, elem)
            elif cat == "reduce":
                r = Info(deps, infos[0].lin, not deps)
            elif cat == "bilinear":
                x, y = infos
                r = Info(deps, x.lin and y.lin and not (x.deps and y.deps), not deps)
            elif name == "solve":
                x, y = infos
                r = Info(deps, not x.deps and y.lin, not deps)
            else:
                r = Info(deps, not deps, not deps)
    else:  # pragma: no cover
        r = C
    memo[k] = r
    return r


# ------------------------------------------------------------------------------- generate

def _pyname(kind, name):
    return {"state": "s_", "input": "x_", "param": "p_", "local": "v_"}[kind] + name


def _doc_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def _names_used(e, out: set):
    stack = [e]
    while stack:
        x = stack.pop()
        if x is None:
            continue
        if isinstance(x, A.Name):
            out.add(x.name)
        elif isinstance(x, A.UnaryOp):
            stack.append(x.operand)
        elif isinstance(x, A.BinOp):
            stack += [x.left, x.right]
        elif isinstance(x, A.Transpose):
            stack.append(x.operand)
        elif isinstance(x, A.Index):
            stack.append(x.operand)
        elif isinstance(x, A.Call):
            stack += list(x.args)
    return out


def generate(chk: Checked, sym: Symbolic, *, dtype=None, plan_text: Optional[str] = None,
             _force_ast: bool = False) -> tuple:
    """Return ``(source, forms)``: the module text and, per state, ``"ast"`` or ``"sympy"``
    (which form its update was generated from)."""
    names = {}
    for n, k in chk.kinds.items():
        if k in ("state", "input", "param", "local"):
            names[n] = _pyname(k, n)
    names["t"] = "t_"
    states = frozenset(chk.states)

    # which form each update is generated from
    memo: dict = {}
    forms = {}
    for s, e in chk.updates.items():
        a = _ast_info(chk, e, memo, states)
        ast_verdict = (classify(a, s), a.deps)
        info = sym.infos[s]
        sym_verdict = (classify(info, s), info.deps)
        same = ast_verdict == sym_verdict and not sym.simplified[s]
        forms[s] = "ast" if (same or _force_ast) else "sympy"

    # locals needed by AST-form updates
    needed: set = set()
    for s, e in chk.updates.items():
        if forms[s] == "ast":
            _names_used(e, needed)
    changed = True
    while changed:
        changed = False
        for n in list(needed):
            if chk.kinds.get(n) == "local":
                before = len(needed)
                _names_used(chk.locals[n], needed)
                changed |= len(needed) != before
    printer = _AstPrinter(chk, names)

    L = []
    w = L.append
    title = f"Generated by recur from the recurrence '{chk.name}'"
    if chk.filename:
        title += f" ({chk.filename})"
    w('"""' + _doc_escape(title) + ".")
    w("")
    w("step(h, x, p) -> dict: one step. h: states, x: inputs of this step, p: params (all")
    w("dicts keyed by the declared names; fill defaults with fill_params first).")
    if chk.uses_t:
        w('The recurrence uses the step index t: pass it as x["t"] (the caller supplies')
        w("jnp.arange(T) as an extra input leaf).")
    w("init(params=None) -> dict: the initial states.")
    w("")
    for s, (kind, reason) in sym.classification.items():
        w(_doc_escape(f"{s}: {kind} -- {reason}"))
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
    w(f"USES_STEP_INDEX = {bool(chk.uses_t)!r}")
    w(f"CLASSIFICATION = {dict(sym.classification)!r}")
    w("")
    w("")
    w("def _bc(v, shape):")
    w('    """Broadcast v to shape (a Python number becomes a DTYPE array)."""')
    w("    if isinstance(v, (int, float)):")
    w("        v = jnp.asarray(v, DTYPE)")
    w("    return jnp.broadcast_to(v, shape)")
    w("")
    w("")
    w("def _out(v, shape):")
    w('    """A new state value: cast to DTYPE, broadcast to the declared shape."""')
    w("    return jnp.broadcast_to(jnp.asarray(v, DTYPE), shape)")
    w("")
    w("")
    w("def _logdet(m):")
    w("    return jnp.linalg.slogdet(m)[1]")
    w("")
    w("")
    w("def param_defaults():")
    w('    """The params\' default values (None where the file gives none)."""')
    w("    return {")
    for n, shape in chk.params.items():
        v = chk.param_values[n]
        code = "None" if v is None else f"_out({printer.code(v)[0]}, {tuple(shape)!r})"
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
            w(f"        raise ValueError({('param ' + repr(n) + ' is needed by the initial states and has no value')!r})")
            w(f"    {names[n]} = jnp.asarray(p[{n!r}], DTYPE)")
    w("    return {")
    for s, shape in chk.states.items():
        v = chk.state_inits[s]
        code = "0.0" if v is None else printer.code(v)[0]
        w(f"        {s!r}: _out({code}, {tuple(shape)!r}),")
    w("    }")
    w("")
    w("")
    w("def step(h, x, p):")
    w('    """One step: new states from states h, this step\'s inputs x, params p."""')
    body = []
    b = body.append
    for s in chk.states:
        b(f"{names[s]} = h[{s!r}]")
    for i in chk.inputs:
        b(f"{names[i]} = x[{i!r}]")
    if chk.uses_t:
        b("if x is None or 't' not in x:")
        b("    raise KeyError('this recurrence uses the step index t: pass x[\"t\"] = "
          "jnp.arange(T) among the inputs')")
        b("t_ = jnp.asarray(x['t'], DTYPE)")
    for n in chk.params:
        b(f"{names[n]} = p[{n!r}]")
    for n, e in chk.locals.items():
        if n in needed:
            b(f"{names[n]} = {printer.code(e)[0]}")
    sym_shapes = dict(chk.states)
    sym_shapes.update(chk.inputs)
    sym_shapes.update(chk.params)
    sym_shapes["t"] = ()
    results = {}
    sp_printer = None
    for s, e in chk.updates.items():
        if forms[s] == "ast":
            results[s] = printer.code(e)[0]
        else:
            if sp_printer is None:
                sp_printer = _SymPrinter(names, sym_shapes, sym.subscripts, body)
                for s2 in chk.updates:
                    if forms[s2] == "sympy":
                        sp_printer.count_uses(sym.updates[s2])
            b(f"# {s}' from its simplified symbolic form")
            results[s] = sp_printer.code(sym.updates[s])
    b("return {")
    for s, shape in chk.states.items():
        b(f"    {s!r}: _out({results[s]}, {tuple(shape)!r}),")
    b("}")
    for line in body:
        w("    " + line)
    w("")
    return "\n".join(L), forms
