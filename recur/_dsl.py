"""``recur.load``/``loads``/``compile``: ``.rec`` recurrences as ``Recurrence`` objects."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp

from ._api import Recurrence, plan, scan
from ._errors import DSLError, PlanError
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

    def _inputs(self, xs: Any, length: int | None) -> tuple[Any, int | None]:
        declared = self.model.inputs
        xs = dict(xs or {})
        unknown = sorted(set(xs) - set(declared))
        missing = sorted(set(declared) - set(xs))
        if unknown or missing:
            parts = []
            if missing:
                parts.append(f"missing input(s) {', '.join(missing)}")
            if unknown:
                parts.append(f"unknown input(s) {', '.join(unknown)}")
            raise DSLError(f"recurrence '{self.model.name}': {'; '.join(parts)}; it declares "
                           f"inputs {', '.join(declared) or 'none'}.",
                           filename=self.model.filename)
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


def _declared_names(the_plan, model: RecModel):
    """DSL states are named by their declared names (``h``), not pytree paths (``['h']``)."""
    names = {f"[{k!r}]": k for k in model.states}

    def rn(name: str) -> str:
        return names.get(name, name)

    stages = tuple(dataclasses.replace(
        st, states=tuple(map(rn, st.states)),
        reads=tuple((rn(s), tuple(map(rn, r))) for s, r in st.reads),
        evidence=_rename_text(st.evidence, names), why=_rename_text(st.why, names),
        rejected=tuple((m, _rename_text(w, names)) for m, w in st.rejected))
        for st in the_plan.stages)
    return dataclasses.replace(
        the_plan, stages=stages,
        edges=tuple((rn(u), rn(v), w) for u, v, w in the_plan.edges),
        state_sizes=tuple((rn(n), s) for n, s in the_plan.state_sizes),
        state_kinds=tuple((rn(n), k) for n, k in the_plan.state_kinds))


@contextlib.contextmanager
def _declared_names_in_errors(model: RecModel):
    """Plan errors name DSL states by their declared names, as plans do."""
    try:
        yield
    except PlanError as exc:
        names = {f"[{k!r}]": k for k in model.states}
        raise PlanError(_rename_text(str(exc), names)) from None


def _rename_text(text: str, names: dict[str, str]) -> str:
    for old, new in names.items():
        text = text.replace(old, new)
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
