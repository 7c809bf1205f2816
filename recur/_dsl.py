"""``recur.load``/``loads``/``compile``: ``.rec`` recurrences as ``Recurrence`` objects.

States, inputs and params are dicts keyed by the declared names, checked against the
declarations before anything is traced. Plans and errors name states by their declared
names and point into the ``.rec`` file (line, column, line text) where JAX's source
information points into the generated code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._api import Recurrence, plan, scan
from ._errors import ConvergenceError, DSLError, PlanError, StepFunctionError
from .grammar import RecModel, compile_source, load_model


class DSLRecurrence(Recurrence):
    """A recurrence loaded from ``.rec`` text: dict states/inputs/params keyed by the
    declared names; ``params`` may be omitted or partial where the file gives defaults."""

    def __init__(self, model: RecModel, **options: Any):
        super().__init__(model.step, **options)
        self.model = model
        self.__name__ = model.name

    def init(self, params: Any = None) -> dict:
        """The initial states from the file's initial values."""
        return self.model.init(params)

    def _error(self, message: str) -> DSLError:
        return DSLError(f"recurrence '{self.model.name}': {message}",
                        filename=self.model.filename)

    def _states(self, h0: Any) -> Any:
        """``h0``, checked against the declared states (names and shapes)."""
        declared = self.model.states
        wanted = _shapes_text(declared)
        if not isinstance(h0, Mapping):
            raise self._error(f"h0 must be a dict of the declared states {wanted} "
                              f"(rec.init() gives one), got {_describe(h0)}.")
        missing = [k for k in declared if k not in h0]
        unknown = sorted(map(str, set(h0) - set(declared)))
        if missing or unknown:
            raise self._error(_mismatch("state", missing, unknown) +
                              f"; h0 must hold the declared states {wanted}.")
        for k, shape in declared.items():
            got = _shape(h0[k])
            if got is not None and got != tuple(shape):
                raise self._error(f"state '{k}' in h0 has shape {got}; declared "
                                  f"{k}{list(shape)}, shape {tuple(shape)}.")
        return h0

    def _inputs(self, xs: Any, length: int | None) -> tuple[Any, int | None]:
        declared = self.model.inputs
        if xs is not None and not isinstance(xs, Mapping):
            hint = (f" (write xs={{{next(iter(declared))!r}: array}})" if len(declared) == 1
                    else "")
            if not declared:
                raise self._error(f"it declares no inputs: pass xs=None and length=T, not "
                                  f"{_describe(xs)}.")
            raise self._error(f"xs must be a dict of the declared inputs "
                              f"{_shapes_text(declared, time=True)}, got {_describe(xs)}"
                              f"{hint}.")
        xs = dict(xs or {})
        unknown = sorted(map(str, set(xs) - set(declared)))
        missing = [k for k in declared if k not in xs]
        if unknown or missing:
            raise self._error(_mismatch("input", missing, unknown) +
                              f"; it declares inputs {', '.join(declared) or 'none'}.")
        for k, v in xs.items():
            shape = tuple(getattr(v, "shape", ()))
            if shape[1:] != tuple(declared[k]):
                raise DSLError(f"input {k!r} of recurrence '{self.model.name}' has shape "
                               f"{shape}; expected (T{''.join(f', {d}' for d in declared[k])}) "
                               f"(declared {k}{list(declared[k])}, plus the time axis).",
                               filename=self.model.filename)
        if self.model.uses_step_index:
            T = length
            if T is None:
                if not xs:
                    raise DSLError(f"recurrence '{self.model.name}' has no inputs: pass "
                                   "length=T.", filename=self.model.filename)
                T = jax.tree_util.tree_leaves(xs)[0].shape[0]
            xs["t"] = jnp.arange(T)
        return (xs if xs else None), length

    def _args(self, h0, xs, params, length):
        h0 = self._states(h0)
        xs, length = self._inputs(xs, length)
        return h0, xs, self.model.fill_params(params), length

    def scan(self, h0: Any, xs: Any = None, params: Any = None, *, length: int | None = None,
             reverse: bool = False, method: str | None = None, return_info: bool = False,
             **options: Any):
        method, options = self._merged(method, options)
        h0, xs, p, length = self._args(h0, xs, params, length)
        with _declared_names_in_errors(self.model):
            return scan(self.fn, h0, xs, p, length=length, reverse=reverse, method=method,
                        return_info=return_info, **options)

    def lax_scan(self, h0: Any, xs: Any = None, params: Any = None, *,
                 length: int | None = None, reverse: bool = False, unroll: int | bool = 1,
                 method: str | None = None, return_info: bool = False, **options: Any):
        """``(final states, outputs)`` exactly as ``jax.lax.scan(lambda h, x:
        model.lax_step(h, x, params), h0, xs)``: the outputs (a dict of the declared
        ``output``s, each with a leading axis ``T``) are computed from the previous states,
        the inputs and the new states. Runs through ``recur.lax.scan`` with recur's plan
        and options (``return_info=True`` gives ``((final, outputs), info)``)."""
        from . import lax as _lax
        method, options = self._merged(method, options)
        h0, xs, p, length = self._args(h0, xs, params, length)
        lax_step = self.model.lax_step

        def body(h, x):
            return lax_step(h, x, p)
        with _declared_names_in_errors(self.model):
            return _lax.scan(body, h0, xs, length=length, reverse=reverse, unroll=unroll,
                             method=method, return_info=return_info, **options)

    def plan(self, h0: Any = None, xs: Any = None, params: Any = None, *,
             length: int | None = None, reverse: bool = False, method: str | None = None,
             backend: str | None = None, mesh: Any = None, axis_name: str | None = None,
             **options: Any):
        """Shapes suffice; ``h0=None`` uses the file's declared state shapes, and ``xs=None``
        with ``length`` the declared input shapes."""
        method, options = self._merged(method, options)
        model = self.model
        if h0 is None:
            h0 = {k: jax.ShapeDtypeStruct(s, model.dtype) for k, s in model.states.items()}
        h0 = self._states(h0)
        if xs is None and model.inputs:
            T = 1 if length is None else length
            xs = {k: jax.ShapeDtypeStruct((T,) + tuple(s), model.dtype)
                  for k, s in model.inputs.items()}
            length = None
        if params is None:
            params = {k: jax.ShapeDtypeStruct(tuple(s), model.dtype)
                      for k, s in model.params.items()}
        xs, length = self._inputs(xs, length if length is not None or model.inputs else 1)
        with _declared_names_in_errors(model):
            the_plan = plan(self.fn, h0, xs, params, length=length, reverse=reverse,
                            method=method, backend=backend, mesh=mesh, axis_name=axis_name,
                            **options)
        return _declared_names(the_plan, model)

    def __repr__(self) -> str:
        return f"recur.DSLRecurrence({self.model.name!r})"


def _shape(v: Any) -> tuple | None:
    shape = getattr(v, "shape", None)
    if shape is None:
        try:
            shape = np.shape(v)
        except Exception:  # noqa: BLE001 - not array-like: the step will say so
            return None
    return tuple(shape)


def _describe(v: Any) -> str:
    shape = getattr(v, "shape", None)
    if shape is not None:
        return f"an array of shape {tuple(shape)}"
    return f"a {type(v).__name__}"


def _shapes_text(declared: dict, time: bool = False) -> str:
    """``{'x': (T, 8)}``: the declared shapes, with the time axis for inputs."""
    def shape(s):
        dims = (["T"] if time else []) + [str(d) for d in s]
        return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
    return "{" + ", ".join(f"{k!r}: {shape(s)}" for k, s in declared.items()) + "}"


def _mismatch(what: str, missing, unknown) -> str:
    parts = []
    if missing:
        parts.append(f"missing {what}(s) {', '.join(missing)}")
    if unknown:
        parts.append(f"unknown {what}(s) {', '.join(unknown)}")
    return "; ".join(parts)


def _declared_names(the_plan, model: RecModel):
    """DSL states are named by their declared names (``h``), not pytree paths (``['h']``),
    and locations point into the ``.rec`` file, not the generated code."""
    def rn(name: str) -> str:          # ['h'] -> h, ['h'][0:4] -> h[0:4]
        return _rewrite_text(name, model)

    def text(t: str) -> str:
        return _rewrite_text(t, model)

    stages = tuple(dataclasses.replace(
        st, states=tuple(map(rn, st.states)),
        reads=tuple((rn(s), tuple(map(rn, r))) for s, r in st.reads),
        evidence=text(st.evidence), why=text(st.why),
        rejected=tuple((m, text(w)) for m, w in st.rejected),
        jacobian_note=text(st.jacobian_note))
        for st in the_plan.stages)
    return dataclasses.replace(
        the_plan, stages=stages, notes=tuple(map(text, the_plan.notes)),
        passes=tuple((n, text(t)) for n, t in the_plan.passes),
        edges=tuple((rn(u), rn(v), w) for u, v, w in the_plan.edges),
        state_sizes=tuple((rn(n), s) for n, s in the_plan.state_sizes),
        state_kinds=tuple((rn(n), k) for n, k in the_plan.state_kinds))


_REWORDED = (PlanError, StepFunctionError, ConvergenceError)


@contextlib.contextmanager
def _declared_names_in_errors(model: RecModel):
    """Errors name DSL states by their declared names and point into the ``.rec`` file,
    as plans do."""
    try:
        yield
    except _REWORDED as exc:
        message = _rewrite_text(str(exc), model)
        reworded = None
        if message != str(exc):
            with contextlib.suppress(Exception):   # a subclass with another signature
                reworded = type(exc)(message)
        if reworded is None:
            raise
        raise reworded from None


def _rewrite_text(text: str, model: RecModel) -> str:
    if not isinstance(text, str):
        return text
    text = model.point_to_source(text)
    for k in model.states:
        text = text.replace(f"[{k!r}]", k)
    return text


def loads(source: str, name: str | None = None, dtype: Any = None, *,
          filename: str | None = None, **dims: int) -> DSLRecurrence:
    """A recurrence from ``.rec`` text (``dims`` override the file's ``dim`` defaults)."""
    if not isinstance(source, str):
        raise DSLError(f"recur.loads needs the .rec text as a str, got {type(source).__name__}")
    return DSLRecurrence(load_model(source, filename=filename, name=name, dtype=dtype, **dims))


def load(path: str | os.PathLike, name: str | None = None, dtype: Any = None,
         **dims: int) -> DSLRecurrence:
    """A recurrence from a ``.rec`` file."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DSLError(f"cannot read {os.fspath(path)}: {exc}", filename=os.fspath(path)) \
            from None
    return loads(text, name=name, dtype=dtype, filename=os.fspath(path), **dims)


def compile(source: str, name: str | None = None, dtype: Any = None, *,  # noqa: A001
            filename: str | None = None, with_plan: bool = True, **dims: int) -> str:
    """The recurrence as a standalone Python module (imports jax only), with its plan in
    the module docstring."""
    plan_text = None
    if with_plan:
        rec = loads(source, name=name, dtype=dtype, filename=filename, **dims)
        plan_text = rec.plan(length=1).explain()
    return compile_source(source, name=name, dims=dims or None, dtype=dtype,
                          plan_text=plan_text, filename=filename)


__all__ = ["DSLRecurrence", "load", "loads", "compile"]
