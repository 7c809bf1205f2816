"""Front end for Python step functions: trace ``fn`` into a ``StepIR``.

The IR is the jaxpr of one step on abstract values,

    (h leaves..., x_t leaves..., params leaves...) -> h_next leaves...,

with the closed-over arrays of ``fn`` as the jaxpr's constants, plus the pytree
structure, shape and dtype of every leaf.  Everything downstream (dependency,
linearity, structure, verification, lowering) reads only this record.

Tracing is where a user's mistakes surface first, so every failure here becomes a
``StepFunctionError`` that says which leaf, which form of the call, and what to do.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from .._dtypes import is_numeric
from .._errors import StepFunctionError
from .._jax_adapter import ClosedJaxpr

ROOT_NAME = "h"


@dataclasses.dataclass(frozen=True)
class LeafInfo:
    """One flattened leaf: its name (``jax.tree_util.keystr`` of its path), shape, dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def describe(self) -> str:
        return f"{self.dtype.name}{list(self.shape)}"


@dataclasses.dataclass(frozen=True)
class StepIR:
    """A traced step function ``h_next = fn(h, x_t[, params])`` and its leaves."""

    fn: Callable[..., Any] = dataclasses.field(repr=False)
    has_params: bool
    state_treedef: Any
    state: tuple[LeafInfo, ...]
    input_treedef: Any  # None when xs is None
    inputs: tuple[LeafInfo, ...]  # per-step shapes (leading T removed)
    param_treedef: Any
    params: tuple[LeafInfo, ...]
    length: int
    reverse: bool
    jaxpr: ClosedJaxpr = dataclasses.field(repr=False)

    @property
    def n_state(self) -> int:
        return sum(leaf.size for leaf in self.state)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start of each state leaf in the flat state vector (leaves raveled, in order)."""
        return tuple(int(o) for o in np.cumsum([0] + [leaf.size for leaf in self.state])[:-1])

    def element_name(self, i: int) -> str:
        """Name of flat state element ``i``, e.g. ``"['h'][3]"`` or ``"['P'][1, 2]"``."""
        for leaf, off in zip(self.state, self.offsets):
            if off <= i < off + leaf.size:
                if leaf.shape == ():
                    return leaf.name
                idx = np.unravel_index(i - off, leaf.shape)
                return f"{leaf.name}[{', '.join(str(int(j)) for j in idx)}]"
        raise IndexError(i)

    def call(self, h: Any, x: Any, params: Any) -> Any:
        """One step on pytrees, in the form the user asked for."""
        return call_step(self.fn, h, x, params, self.has_params)

    def flat_call(self, h_leaves, x_leaves, p_leaves) -> list[Any]:
        h = jax.tree_util.tree_unflatten(self.state_treedef, list(h_leaves))
        x = None if self.input_treedef is None else jax.tree_util.tree_unflatten(
            self.input_treedef, list(x_leaves))
        p = jax.tree_util.tree_unflatten(self.param_treedef, list(p_leaves))
        return jax.tree_util.tree_leaves(self.call(h, x, p))


def call_step(fn, h, x, params, has_params: bool):
    return fn(h, x, params) if has_params else fn(h, x)


_ROOT_NAMES = {"h0": ROOT_NAME, "xs": "x", "params": "params"}


def leaf_name(path, what: str = "h0") -> str:
    return jax.tree_util.keystr(tuple(path)) or _ROOT_NAMES.get(what, ROOT_NAME)


def _leaf_spec(value: Any, what: str, name: str) -> tuple[tuple[int, ...], np.dtype]:
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is None or dtype is None:
        try:
            arr = np.asarray(value) if not isinstance(value, (bool, int, float, complex)) \
                else jnp.asarray(value)
        except Exception as exc:  # noqa: BLE001 - any conversion failure is the user's leaf
            raise StepFunctionError(
                f"{what} leaf {name} is not an array ({type(value).__name__}): {exc}") from None
        shape, dtype = arr.shape, arr.dtype
    dtype = np.dtype(dtype)
    if not is_numeric(dtype):
        raise StepFunctionError(
            f"{what} leaf {name} has dtype {dtype} ({type(value).__name__}); "
            "recur needs numeric arrays (bool, int, float or complex).")
    return tuple(int(s) for s in shape), dtype


def _flatten(tree: Any, what: str) -> tuple[list[Any], Any, list[str]]:
    try:
        paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    except Exception as exc:  # noqa: BLE001
        raise StepFunctionError(f"cannot flatten {what} as a pytree: {exc}") from None
    names = [leaf_name(p, what) for p, _ in paths_leaves]
    return [leaf for _, leaf in paths_leaves], treedef, names


def sequence_length(xs: Any, length: int | None) -> tuple[int, list[Any], Any, list[str]]:
    """Check that every leaf of ``xs`` has the same leading axis and return it."""
    if xs is None:
        if length is None:
            raise StepFunctionError(
                "xs=None needs length=T: recur cannot know how many steps to run "
                "without per-step inputs.")
        if int(length) < 0:
            raise StepFunctionError(f"length must be non-negative, got {length}.")
        return int(length), [], None, []
    leaves, treedef, names = _flatten(xs, "xs")
    if not leaves:
        if length is None:
            raise StepFunctionError(
                "xs has no array leaves; pass length=T (or xs=None with length=T).")
        return int(length), [], treedef, []
    lengths = {}
    for name, leaf in zip(names, leaves):
        shape, _ = _leaf_spec(leaf, "xs", name)
        if len(shape) == 0:
            raise StepFunctionError(
                f"xs leaf {name} is a scalar; every leaf of xs needs a leading time axis "
                "of length T.")
        lengths[name] = shape[0]
    distinct = sorted(set(lengths.values()))
    if len(distinct) > 1:
        listing = ", ".join(f"{n}: {t}" for n, t in lengths.items())
        raise StepFunctionError(
            f"the leaves of xs have unequal lengths along the time axis ({listing}); "
            "every leaf needs the same leading axis T.")
    T = distinct[0]
    if length is not None and int(length) != T:
        raise StepFunctionError(f"length={length} but the leaves of xs have length {T}.")
    return T, leaves, treedef, names


_ADVICE_CONTROL_FLOW = (
    "Python control flow (`if`, `while`, `bool()`, `int()`) on a value that depends on the "
    "state, the inputs or the params cannot be traced; use jnp.where / jax.lax.select for "
    "values, jax.lax.cond / jax.lax.switch for branches, jax.lax.fori_loop / "
    "jax.lax.while_loop for loops.")


def _check_arity(fn, has_params: bool) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    args = (None, None, None) if has_params else (None, None)
    try:
        sig.bind(*args)
    except TypeError as exc:
        form = "fn(h, x, params)" if has_params else "fn(h, x)"
        why = ("because params were given" if has_params else
               "because params=None (recur calls fn(h, x, params) only when params is given)")
        raise StepFunctionError(
            f"recur calls the step function as {form} {why}, but its signature "
            f"{getattr(fn, '__name__', 'fn')}{sig} does not accept that: {exc}.") from None


def trace_step(fn: Callable, h0: Any, xs: Any, params: Any = None, *,
               length: int | None = None, reverse: bool = False) -> StepIR:
    """Trace one step of ``fn`` on abstract values and check what it returns."""
    if not callable(fn):
        raise StepFunctionError(f"the step function must be callable, got {type(fn).__name__}.")
    has_params = params is not None
    _check_arity(fn, has_params)

    h_leaves, h_def, h_names = _flatten(h0, "h0")
    h_specs = [LeafInfo(n, *_leaf_spec(v, "h0", n)) for n, v in zip(h_names, h_leaves)]
    T, x_leaves, x_def, x_names = sequence_length(xs, length)
    x_specs = [LeafInfo(n, *_leaf_spec(v, "xs", n)) for n, v in zip(x_names, x_leaves)]
    x_specs = [dataclasses.replace(s, shape=s.shape[1:]) for s in x_specs]
    p_leaves, p_def, p_names = _flatten(params, "params")
    p_specs = [LeafInfo(n, *_leaf_spec(v, "params", n)) for n, v in zip(p_names, p_leaves)]

    ir_partial = dict(fn=fn, has_params=has_params, state_treedef=h_def, state=tuple(h_specs),
                      input_treedef=x_def if xs is not None else None, inputs=tuple(x_specs),
                      param_treedef=p_def, params=tuple(p_specs), length=T, reverse=bool(reverse))
    nh, nx = len(h_specs), len(x_specs)

    out_store = {}

    def flat_fn(*leaves):
        h = jax.tree_util.tree_unflatten(h_def, leaves[:nh])
        x = None if xs is None else jax.tree_util.tree_unflatten(x_def, leaves[nh:nh + nx])
        p = jax.tree_util.tree_unflatten(p_def, leaves[nh + nx:])
        out = call_step(fn, h, x, p, has_params)
        out_leaves, out_def = jax.tree_util.tree_flatten(out)
        out_store["treedef"] = out_def
        out_store["names"] = [leaf_name(p) for p, _ in
                              jax.tree_util.tree_flatten_with_path(out)[0]]
        return out_leaves

    avals = [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in h_specs + x_specs + p_specs]
    form = "fn(h, x, params)" if has_params else "fn(h, x)"
    try:
        closed = jax.make_jaxpr(flat_fn)(*avals)
    except (jax.errors.TracerBoolConversionError, jax.errors.ConcretizationTypeError,
            jax.errors.TracerIntegerConversionError,
            jax.errors.TracerArrayConversionError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise StepFunctionError(
            f"the step function cannot be traced: {_ADVICE_CONTROL_FLOW} "
            f"(JAX said: {first})") from exc
    except StepFunctionError:
        raise
    except TypeError as exc:
        raise StepFunctionError(
            f"calling the step function as {form} on abstract values raised TypeError: {exc}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - the user's own code raised while tracing
        raise StepFunctionError(
            f"the step function raised {type(exc).__name__} while being traced as {form} on "
            f"abstract values (state {_describe(h_specs)}, input {_describe(x_specs)}): {exc}"
        ) from exc

    out_def = out_store["treedef"]
    if out_def != h_def:
        raise StepFunctionError(
            "the step function returns another structure than the state: the state is "
            f"{h_def} but the step returned {out_def}. It must return the new state with "
            "exactly the structure of h0.")
    for spec, out_aval in zip(h_specs, closed.out_avals):
        if tuple(out_aval.shape) != spec.shape:
            raise StepFunctionError(
                f"the step function returns state leaf {spec.name} with shape "
                f"{tuple(out_aval.shape)}, but the state has shape {spec.shape}.")
        if np.dtype(out_aval.dtype) != spec.dtype:
            raise StepFunctionError(
                f"the step function returns state leaf {spec.name} as {np.dtype(out_aval.dtype)}"
                f", but the state is {spec.dtype}; a state must keep its dtype (lax.scan refuses "
                f"the carry otherwise). Cast the new value, e.g. `.astype(h.dtype)`, or make "
                f"params/inputs {spec.dtype}.")
    return StepIR(jaxpr=closed, **ir_partial)


def _describe(specs) -> str:
    return "{" + ", ".join(f"{s.name}: {s.describe()}" for s in specs) + "}" if specs else "None"


__all__ = ["LeafInfo", "StepIR", "trace_step", "sequence_length", "call_step", "leaf_name"]
