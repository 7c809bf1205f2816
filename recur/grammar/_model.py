"""Loading a ``.rec`` recurrence: parse, check, symbolic pass, code generation, ``exec``."""

from __future__ import annotations

import linecache
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .._errors import DSLError
from . import _ast as A
from ._check import check
from ._codegen import generate, names_used
from ._diag import dsl_error
from ._parser import parse
from ._source_map import SourceMap
from ._symbolic import build_symbolic

__all__ = ["RecModel", "load_model", "compile_source", "recurrence_names"]


@dataclass(frozen=True)
class RecModel:
    """One loaded ``.rec`` recurrence.

    ``step(h, x, p) -> dict`` is the generated JAX step: ``h`` the states, ``x`` this step's
    inputs (``None``/``{}`` when there are none), ``p`` all params (use
    :meth:`fill_params` for defaults). ``lax_step(h, x, p) -> (h', y)`` also gives the
    declared outputs ``y`` (a dict, ``{}`` when none are declared; their shapes are
    ``outputs``), computed from ``h``, ``x`` and the new states: the body for
    ``jax.lax.scan``. When ``uses_step_index`` is true, both also expect ``x["t"]``, the
    index of the step's input in ``xs`` (the caller supplies ``jnp.arange(T)`` as an extra
    input leaf). ``source`` is the generated Python module (the code ``step`` and ``init``
    come from), ``rec_source`` the ``.rec`` text; :meth:`point_to_source` turns locations
    in the generated code (as JAX reports them) into ``.rec`` lines and columns.

    ``classification`` gives each state's kind as the staged plan finds it: in the states
    of its own stage, the states of earlier stages given (the Kalman mean is ``affine``
    given the covariance), with the reason; ``stages`` lists those stages in order.
    """
    name: str
    dims: dict
    states: dict                     # name -> shape
    inputs: dict                     # name -> shape (per step, without the T axis)
    params: dict                     # name -> shape
    param_defaults: dict             # name -> array or None
    step: Callable
    classification: dict             # state -> (kind, reason)
    source: str                      # the generated Python module
    uses_step_index: bool
    dtype: Any
    rec_source: str = ""
    filename: Optional[str] = None
    reads: dict = field(default_factory=dict)       # state -> tuple of states its update reads
    symbolic: dict = field(default_factory=dict)    # state -> its update, sympy form, as text
    init_fn: Optional[Callable] = field(default=None, repr=False)
    init_params: tuple = ()                          # params the initial values use
    sympy_exprs: dict = field(default_factory=dict, repr=False)  # state -> sympy.Expr
    lax_step: Optional[Callable] = field(default=None, repr=False)
    outputs: dict = field(default_factory=dict)      # output name -> shape (per step)
    output_classification: dict = field(default_factory=dict)  # output -> (kind, reason)
    stages: tuple = ()                               # tuples of states, dependency order
    code_file: str = ""                              # the generated code's file name
    source_map: Optional[SourceMap] = field(default=None, repr=False)

    @property
    def kinds(self) -> dict:
        """state -> its kind (``"affine"``, ``"diagonal"`` or ``"nonlinear"``), in its own
        stage (earlier stages given)."""
        return {s: k for s, (k, _) in self.classification.items()}

    @property
    def kind_labels(self) -> dict:
        """state -> its kind in words for a summary line: ``"affine given P"`` where the
        kind holds given the states of earlier stages it reads."""
        given = {s: [r for r in self.reads.get(s, ()) if r not in _stage_of(self.stages, s)]
                 for s in self.states}
        return {s: k + (f" given {', '.join(given[s])}" if given[s] else "")
                for s, k in self.kinds.items()}

    def locate(self, line: int, column: Optional[int] = None,
               primitive: Optional[str] = None) -> Optional[tuple]:
        """``(line, column, line text)`` in the ``.rec`` file of a generated-code location
        (1-based line, JAX's 0-based column), or ``None`` where it is not ``.rec`` code."""
        node = self.source_map.locate(line, column, primitive) if self.source_map else None
        if node is None or not getattr(node, "line", 0):
            return None
        lines = self.rec_source.split("\n")
        text = lines[node.line - 1].strip() if node.line <= len(lines) else ""
        return node.line, node.column, text

    def point_to_source(self, text: str) -> str:
        """``text`` with every location in the generated code (``<recur:NAME:K>:L:C
        (step)``, as JAX's source info prints it) replaced by the ``.rec`` file, line,
        column and line text."""
        if not self.code_file or self.code_file not in text:
            return text
        where = re.escape(self.code_file) + r":(\d+)(?::(\d+))? \((\w+)\)"

        def sub(m):
            col = None if m.group(2) is None else int(m.group(2))
            found = self.locate(int(m.group(1)), col, _primitive_hint(text[:m.start()]))
            if found is None:
                return m.group(0)
            line, column, src = found
            return f"{self.filename or '<string>'}, line {line}, column {column}: `{src}`"
        return re.sub(where, sub, text)

    def fill_params(self, params=None) -> dict:
        """All params, defaults filled in, cast to ``dtype``; ``DSLError`` when one without
        default is missing or an unknown one is given."""
        import jax.numpy as jnp
        given = dict(params or {})
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise DSLError(f"unknown param(s) {', '.join(unknown)} for recurrence '{self.name}'; "
                           f"it declares: {', '.join(self.params) or 'none'}",
                           filename=self.filename)
        out = {}
        for k, shape in self.params.items():
            v = given.get(k)
            if v is None:
                v = self.param_defaults.get(k)
            if v is None:
                raise DSLError(f"param '{k}' of recurrence '{self.name}' has no default and was "
                               "not given", filename=self.filename)
            v = jnp.asarray(v, self.dtype)
            if tuple(v.shape) != tuple(shape):
                try:
                    v = jnp.broadcast_to(v, shape)
                except ValueError:
                    raise DSLError(f"param '{k}' has shape {tuple(v.shape)}, expected "
                                   f"{tuple(shape)}", filename=self.filename) from None
            out[k] = v
        return out

    def init(self, params=None) -> dict:
        """The initial states from the file's initial values (params only where they use
        them: a missing one is a ``DSLError``)."""
        given = {k: v for k, v in dict(params or {}).items() if v is not None}
        for k in self.init_params:
            if given.get(k) is None and self.param_defaults.get(k) is None:
                raise DSLError(f"param '{k}' is needed by the initial states of '{self.name}' "
                               "and has no default: give it", filename=self.filename)
        return self.init_fn(given)


_PHRASES = (("product of two state-dependent arrays", "dot_general"),
            ("product", "mul"), ("division", "div"), ("choice", "select_n"),
            ("power", "pow"))


def _primitive_hint(before: str) -> Optional[str]:
    """The JAX primitive a plan's text names just before a location: `name` in backticks,
    a comparison (lt), or a phrase ("a product of two state-dependent values")."""
    clause = re.split(r"[;)]\s", before[-240:])[-1]
    m = re.findall(r"`([A-Za-z_]\w*)`", clause) or re.findall(r"\((\w+)\)", clause)
    if m:
        return m[-1]
    return next((prim for phrase, prim in _PHRASES if phrase in clause), None)


def _stage_of(stages, state) -> tuple:
    return next((st for st in stages if state in st), (state,))


def recurrence_names(text, filename: Optional[str] = None) -> list:
    """The names of the recurrences a ``.rec`` text declares, in order."""
    return parse(text, filename).names


def _pick(prog: A.Program, name, filename):
    recs = prog.recurrences
    if not recs:
        raise DSLError(f"{filename or '<string>'}: no recurrence (start the file with "
                       "'recurrence NAME')", filename=filename)
    if name is None:
        if len(recs) > 1:
            listed = ", ".join(r.name for r in recs)
            raise DSLError(f"{filename or '<string>'}: the file holds {len(recs)} recurrences "
                           f"({listed}): pick one with name=...", filename=filename)
        return recs[0]
    seen = {}
    for r in recs:
        if r.name in seen:
            raise dsl_error(f"recurrence '{r.name}' is declared twice (first on line "
                            f"{seen[r.name].line})", prog.text, filename, r.line, r.column)
        seen[r.name] = r
    if name not in seen:
        import difflib
        close = difflib.get_close_matches(str(name), list(seen), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise DSLError(f"{filename or '<string>'}: no recurrence named '{name}'{hint} "
                       f"(the file holds: {', '.join(seen)})", filename=filename)
    return seen[name]


def _resolve_dtype(dtype):
    import jax
    import jax.numpy as jnp
    import numpy as np
    if dtype is None:
        return jnp.zeros(()).dtype
    try:
        dt = np.dtype(dtype)
    except TypeError:
        try:
            dt = jnp.dtype(dtype)
        except TypeError:
            raise DSLError(f"dtype {dtype!r} is not a dtype") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise DSLError(f"dtype must be a floating dtype, got {dt}")
    if jax.dtypes.canonicalize_dtype(dt) != dt:
        raise DSLError(f"dtype {dt} needs JAX's 64-bit mode, which is off: call "
                       'jax.config.update("jax_enable_x64", True) before loading (or set '
                       "JAX_ENABLE_X64=1), or load with dtype=jnp.float32")
    return dt


def _front(text, filename, name, dims) -> tuple:
    prog = parse(text, filename)
    rec = _pick(prog, name, filename)
    chk = check(rec, prog.text, filename, dims)
    sym = build_symbolic(chk)
    return chk, sym


def _guard(fn, filename):
    """Run ``fn``; anything but a ``DSLError`` becomes one (the loader's promise)."""
    try:
        return fn()
    except DSLError:
        raise
    except RecursionError:
        raise DSLError(f"{filename or '<string>'}: the recurrence is too deeply nested to "
                       "process", filename=filename) from None
    except Exception as e:  # noqa: BLE001
        raise DSLError(f"{filename or '<string>'}: cannot load the recurrence "
                       f"({type(e).__name__}: {e})", filename=filename) from e


def compile_source(text, *, name=None, dims=None, dtype=None, plan_text=None, filename=None,
                   **dim_kwargs) -> str:
    """A readable standalone Python module (imports only math, jax, jax.numpy) defining
    ``step``, ``init``, ``fill_params``, ``PARAM_DEFAULTS`` and the shapes.

    ``dims`` (a dict) and keyword dims override the file's dims; ``dtype=None`` makes the
    module use JAX's default float at import time; ``plan_text`` goes into its docstring.
    """
    all_dims = dict(dims or {})
    all_dims.update(dim_kwargs)

    def run():
        chk, sym = _front(text, filename, name, all_dims)
        dt = None if dtype is None else _resolve_dtype(dtype)
        return generate(chk, sym, dtype=dt, plan_text=plan_text)[0]
    return _guard(run, filename)


_COUNTER = [0]


def _exec_module(source: str, rec_name: str) -> tuple:
    """Execute the generated module; ``(namespace, its file name)``."""
    _COUNTER[0] += 1
    fname = f"<recur:{rec_name}:{_COUNTER[0]}>"
    linecache.cache[fname] = (len(source), None, source.splitlines(True), fname)
    ns: dict = {"__name__": f"recur_generated_{_COUNTER[0]}"}
    exec(compile(source, fname, "exec"), ns)
    return ns, fname


def _validate(model: RecModel, ns: dict):
    """Trace the step once on abstract values: shapes and dtype must be the declared ones."""
    import jax
    import jax.numpy as jnp
    dt = model.dtype
    h = {k: jax.ShapeDtypeStruct(s, dt) for k, s in model.states.items()}
    x = {k: jax.ShapeDtypeStruct(s, dt) for k, s in model.inputs.items()}
    if model.uses_step_index:
        x["t"] = jax.ShapeDtypeStruct((), jnp.int32)
    p = {k: jax.ShapeDtypeStruct(s, dt) for k, s in model.params.items()}
    out = jax.eval_shape(model.step, h, x if x else None, p)
    new, ys = jax.eval_shape(model.lax_step, h, x if x else None, p)
    expected = [(f"state '{k}'", out[k], s) for k, s in model.states.items()]
    expected += [(f"state '{k}' (lax_step)", new[k], s) for k, s in model.states.items()]
    expected += [(f"output '{k}'", ys[k], s) for k, s in model.outputs.items()]
    for what, got, shape in expected:
        if tuple(got.shape) != tuple(shape) or got.dtype != dt:
            raise DSLError(f"internal error: the generated code gives {got.shape} "
                           f"{got.dtype} for {what}, expected {tuple(shape)} {dt}")


def load_model(text, *, filename: Optional[str] = None, name: Optional[str] = None,
               dtype=None, **dims) -> RecModel:
    """Parse, check, analyse and compile one recurrence of a ``.rec`` text.

    ``name`` picks a recurrence when the file holds several; ``dims`` override the file's
    dims; ``dtype`` (default: JAX's default float) is the dtype of states, params and
    defaults. Raises only ``DSLSyntaxError`` / ``DSLError``.
    """
    def run():
        chk, sym = _front(text, filename, name, dims)
        dt = _resolve_dtype(dtype)
        source, source_map = generate(chk, sym, dtype=dt)
        ns, code_file = _exec_module(source, chk.name)
        init_params = set()
        for v in chk.state_inits.values():
            if v is not None:
                names_used(v, init_params)
        model = RecModel(
            name=chk.name, dims=dict(chk.dims), states=dict(chk.states),
            inputs=dict(chk.inputs), params=dict(chk.params),
            param_defaults=dict(ns["PARAM_DEFAULTS"]), step=ns["step"],
            classification=dict(sym.classification), source=source,
            uses_step_index=bool(chk.uses_t), dtype=dt, rec_source=chk.text,
            filename=filename, reads=dict(sym.reads),
            symbolic={s: sym.show(s) for s in chk.states},
            init_fn=ns["init"], init_params=tuple(p for p in chk.params if p in init_params),
            sympy_exprs=dict(sym.updates), lax_step=ns["lax_step"],
            outputs=dict(chk.output_shapes),
            output_classification=dict(sym.output_classification),
            stages=tuple(tuple(st) for st in sym.stages), code_file=code_file,
            source_map=source_map)
        _validate(model, ns)
        return model
    return _guard(run, filename)
