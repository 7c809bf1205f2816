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

from .._dtypes import dtype_name, is_key, is_numeric
from .._errors import StepFunctionError
from .. import _jax_adapter as jx
from .._ir import LeafInfo, Outputs, StepIR, call_step

ROOT_NAME = "h"


_ROOT_NAMES = {"h0": ROOT_NAME, "xs": "x", "params": "params"}


def leaf_name(path, what: str = "h0") -> str:
    return jax.tree_util.keystr(tuple(path)) or _ROOT_NAMES.get(what, ROOT_NAME)


def _leaf_spec(value: Any, what: str, name: str) -> tuple[tuple[int, ...], Any, bool]:
    """``(shape, dtype, weak)`` of a leaf; the dtype canonicalised as JAX would (float64 is
    float32 when x64 is off, silently, as ``lax.scan`` does)."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    weak = bool(getattr(value, "weak_type", False))
    if shape is None or dtype is None:
        try:
            arr = np.asarray(value) if not isinstance(value, (bool, int, float, complex)) \
                else jnp.asarray(value)
        except Exception as exc:  # noqa: BLE001 - any conversion failure is the user's leaf
            raise StepFunctionError(
                f"{what} leaf {name} is not an array ({type(value).__name__}): {exc}") from None
        shape, dtype = arr.shape, arr.dtype
        weak = isinstance(value, (bool, int, float, complex))
    if not is_key(dtype):
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise StepFunctionError(
                f"{what} leaf {name} has dtype {dtype} ({type(value).__name__}); recur needs "
                "numeric arrays (bool, int, float, complex) or PRNG keys.") from None
        if not is_numeric(dtype):
            raise StepFunctionError(
                f"{what} leaf {name} has dtype {dtype} ({type(value).__name__}); "
                "recur needs numeric arrays (bool, int, float or complex) or PRNG keys.")
        dtype = np.dtype(jax.dtypes.canonicalize_dtype(dtype))
    return tuple(int(s) for s in shape), dtype, weak


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
        shape = _leaf_spec(leaf, "xs", name)[0]
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


_NO_MESH = jax.sharding.AbstractMesh((), ())


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

    closed = _make_jaxpr(flat_fn, [s.aval for s in h_specs + x_specs + p_specs],
                         "fn(h, x, params)" if has_params else "fn(h, x)", h_specs, x_specs)
    _check_returned(out_store["treedef"], h_def, h_specs, closed.out_avals)
    return StepIR(jaxpr=closed, jvp_blockers=jvp_blockers(closed), **ir_partial)


def _make_jaxpr(flat_fn, avals, form: str, h_specs, x_specs):
    """The closed jaxpr of ``flat_fn``, traced outside any mesh context (every equation
    records the context mesh and re-enters it when replayed, and the step is replayed
    everywhere, inside the shard_map of a plan across devices too); what the user's code
    raised while tracing becomes a ``StepFunctionError`` that says so."""
    try:
        with jax.sharding.use_abstract_mesh(_NO_MESH):
            return jax.make_jaxpr(flat_fn)(*avals)
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


def _check_returned(out_def, h_def, h_specs, out_avals) -> None:
    """The step must return the state's structure, shapes and dtypes."""
    if out_def != h_def:
        hint = ""
        kids = out_def.children() if out_def.num_nodes > 1 else []
        if len(kids) == 2 and kids[0] == h_def and str(out_def).startswith("PyTreeDef(("):
            hint = (" It returns a pair (new state, output): that is a jax.lax.scan body "
                    "`f(carry, x) -> (carry, y)`; use recur.lax.scan(f, init, xs) for it, or "
                    "return only the new state.")
        raise StepFunctionError(
            "the step function returns another structure than the state: the state is "
            f"{h_def} but the step returned {out_def}. It must return the new state with "
            "exactly the structure of h0." + hint)
    for spec, out_aval in zip(h_specs, out_avals):
        if tuple(out_aval.shape) != spec.shape:
            raise StepFunctionError(
                f"the step function returns state leaf {spec.name} with shape "
                f"{tuple(out_aval.shape)}, but the state has shape {spec.shape}.")
        if out_aval.dtype != spec.dtype:
            raise StepFunctionError(
                f"the step function returns state leaf {spec.name} as "
                f"{dtype_name(out_aval.dtype)}, but the state is {dtype_name(spec.dtype)}; a "
                "state must keep its dtype (lax.scan refuses the carry otherwise). Cast the "
                "new value, e.g. `.astype(h.dtype)`, or make params/inputs "
                f"{spec.dtype}.")


def scan_body_pair(out, what: str = "recur.lax.scan"):
    """``(carry, y)`` from what a ``jax.lax.scan`` body returned, or a clear error."""
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise StepFunctionError(
            f"{what} needs a body f(carry, x) -> (carry, y), as jax.lax.scan does; it "
            f"returned {type(out).__name__}"
            + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
            + ". Return a pair (new carry, per-step output); the output may be None.")
    return out[0], out[1]


def trace_outputs(f: Callable, ir: StepIR, unroll: int | bool = 1) -> Outputs:
    """The whole body ``f(carry, x) -> (carry, y)`` on the carry and inputs of ``ir``."""
    nh = len(ir.state)

    store = {}

    def flat(*leaves):
        h = jax.tree_util.tree_unflatten(ir.state_treedef, leaves[:nh])
        x = None if ir.input_treedef is None else jax.tree_util.tree_unflatten(
            ir.input_treedef, leaves[nh:])
        carry, y = scan_body_pair(f(h, x))
        y_leaves, y_def = jax.tree_util.tree_flatten(y)
        store["treedef"] = y_def
        store["names"] = [jax.tree_util.keystr(p) or "y" for p, _ in
                          jax.tree_util.tree_flatten_with_path(y)[0]]
        return jax.tree_util.tree_leaves(carry) + y_leaves

    try:
        closed = jax.make_jaxpr(flat)(*[s.aval for s in ir.state + ir.inputs])
    except StepFunctionError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's body raised while being traced
        raise StepFunctionError(f"the scan body raised {type(exc).__name__} while being traced "
                                f"for its outputs: {exc}") from exc
    outs = closed.out_avals[nh:]
    leaves = tuple(LeafInfo(n, tuple(a.shape), a.dtype, bool(getattr(a, "weak_type", False)))
                   for n, a in zip(store["names"], outs))
    return Outputs(jaxpr=closed, treedef=store["treedef"], leaves=leaves, unroll=unroll)


_NO_JVP = frozenset({"custom_vjp_call", "custom_vjp_call_jaxpr", "pure_callback",
                     "io_callback", "callback"})


def jvp_blockers(closed) -> tuple[str, ...]:
    """Operations forward-mode autodiff cannot go through (a ``jax.custom_vjp`` function,
    a host callback), named as the user wrote them where JAX kept the name."""
    found: list[str] = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name in _NO_JVP:
                label = eqn.params.get("name") or getattr(eqn.params.get("call_jaxpr"), "name",
                                                          None)
                fun = eqn.params.get("fun_jaxpr") or eqn.params.get("call_jaxpr")
                fname = getattr(getattr(fun, "jaxpr", fun), "debug_info", None)
                fname = getattr(fname, "func_name", None) or label
                what = "a custom_vjp function" if "custom_vjp" in name else "a host callback"
                found.append(f"{what} {fname!r}" if fname else what)
            for sub in jx.sub_jaxprs(eqn):
                walk(sub.jaxpr)

    walk(closed.jaxpr)
    return tuple(dict.fromkeys(found))


def _describe(specs) -> str:
    return "{" + ", ".join(f"{s.name}: {s.describe()}" for s in specs) + "}" if specs else "None"


__all__ = ["LeafInfo", "StepIR", "trace_step", "trace_outputs", "scan_body_pair",
           "sequence_length", "call_step", "leaf_name"]
