r"""The linearity pass's rules for primitives that hold no jaxpr (see ``_linearity_levels``
for the lattice and the selections ``σ``).

Levels propagate through primitives that preserve affinity: ``add``/``sub``/``neg``,
products and quotients with one state-free side, ``dot_general`` with one state-free side,
data movement, ``select_n`` with a state-free predicate, sums and cumulative sums,
``gather`` and scatters with state-free indices (a state-free pad value, gather fill or
added update is an offset: affine).  Everything else that touches a state-dependent value —
nonlinear functions, products of two state-dependent values, ``stop_gradient``,
``custom_jvp``/``custom_vjp`` calls (their JVP is a user's rule, not the function's), a
scatter that applies a function, callbacks, comparisons, reductions other than sums — is
*nonlinear*, with the reason recorded.

The JVP alone is never trusted: ``h + stop_gradient(h**2)`` has the state-free JVP ``I`` and
is not affine; here it is nonlinear because ``stop_gradient`` receives a state-dependent
value.  A complex-conjugate, real or imaginary part of a state-dependent complex value is
only real-linear, so it counts as nonlinear (the scans are complex-linear); so does a
conversion from complex to real or to an exact dtype.
"""

from __future__ import annotations

import numpy as np

from .._dtypes import is_complex, is_inexact
from ._dependency_movement import GATHERING, MOVEMENT, PASS_THROUGH
from ._dependency_reductions import CUMULATIVE
from ._linearity_levels import (AFFINE, FREE, NONLINEAR, ONE, SCALAR, Level, choice,
                                is_literal_value, join, moved, nonlinear, offset, shape_of,
                                times)

_KEEP = MOVEMENT | GATHERING | {"copy", "copy_p", "pad"}
_SUMS = frozenset({"reduce_sum", "cumsum"})
_COMPARISONS = frozenset("lt le gt ge eq ne".split())


def primitive_rule(eqn, ins: list[Level]) -> list[Level] | None:
    """The levels of ``eqn``'s results, given its operands' (one of them state-dependent; a
    nonlinear one makes every result nonlinear), or None for a call (whose body the pass
    follows) and for a primitive without a rule here (``nonlinear_rule``)."""
    name = eqn.primitive.name
    dep = [i for i, lv in enumerate(ins) if lv.level > FREE]
    n_out = len(eqn.outvars)
    out_shape = shape_of(eqn.outvars[0]) if eqn.outvars else ()
    if any(lv.level == NONLINEAR for lv in ins):
        return [nonlinear(eqn, ins, name)] * n_out

    if name in ("add", "add_any"):
        return [offset(eqn, ins, dep[0] if len(dep) == 1 else None)]
    if name == "sub":
        return [offset(eqn, ins, dep[0] if len(dep) == 1 else None, negated=dep == [1])]
    if name == "neg":
        return [times(ins[0], out_shape, SCALAR)]
    if name in ("mul", "div"):
        if len(dep) == 2 or (name == "div" and dep != [0]):
            return [nonlinear(eqn, ins, "a product of two state-dependent values"
                              if name == "mul" else "a division by a state-dependent value")]
        return [_product(eqn, ins[dep[0]], eqn.invars[1 - dep[0]], ins[1 - dep[0]], out_shape)]
    if name == "dot_general":
        if len(dep) == 2:
            return [nonlinear(eqn, ins, "a product of two state-dependent arrays (dot_general)")]
        return [Level(ins[dep[0]].level)]
    if name == "convert_element_type":
        return [_convert(eqn, ins)]
    if name == "integer_pow" and eqn.params["y"] == 1:
        return [ins[0]]
    if name in PASS_THROUGH:
        return list(ins)
    if name in _KEEP:
        return _keep(eqn, ins)
    if name in _SUMS:
        return [Level(ins[0].level)]
    if name == "select_n":
        if ins[0].level > FREE:
            return [nonlinear(eqn, ins, "a choice on a state-dependent predicate (where/select)")]
        sel, coef = choice(ins[1:], out_shape,
                           uniform=shape_of(eqn.invars[0]) == () or ins[0].uniform)
        return [Level(offset(eqn, ins[1:], None).level, sel, coef)]
    if name in ("gather", "dynamic_slice", "dynamic_update_slice") or name.startswith("scatter"):
        return [_indexed(eqn, ins, dep)]
    if name == "stop_gradient":
        return [nonlinear(eqn, ins, "stop_gradient of a state-dependent value (its JVP "
                                    "hides the dependence, so affinity cannot be trusted)")]
    if name in ("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"):
        fname = eqn.params.get("name", "")
        return [nonlinear(eqn, ins, f"a {name.replace('_call', '').replace('_jaxpr', '')} "
                                    f"function{' ' + repr(fname) if fname else ''} (its "
                                    "derivative is a user rule, not the function's)")] * n_out
    return None


def nonlinear_rule(eqn, ins: list[Level]) -> list[Level]:
    """A primitive without a rule: nonlinear in a state-dependent operand."""
    name, n_out = eqn.primitive.name, len(eqn.outvars)
    if name in CUMULATIVE or name.startswith("reduce") or name in ("argmax", "argmin"):
        return [nonlinear(eqn, ins, f"{name} of a state-dependent value")] * n_out
    if name in _COMPARISONS:
        return [nonlinear(eqn, ins, f"a comparison ({name}) of a state-dependent value")] * n_out
    return [nonlinear(eqn, ins, f"the nonlinear primitive `{name}`")] * n_out


def _mode_name(eqn) -> str:
    mode = eqn.params.get("mode")
    return getattr(mode, "name", str(mode))


def _product(eqn, lv: Level, other, other_level: Level, out_shape) -> Level:
    """A state-dependent value times (or over) a state-free one: the selection survives a
    literal 1 (``ONE``) or a rank-0 or uniform factor (``SCALAR``), not an elementwise one."""
    if eqn.primitive.name == "mul" and is_literal_value(other, 1):
        return times(lv, out_shape, ONE)
    if shape_of(other) == () or other_level.uniform:
        return times(lv, out_shape, SCALAR)
    return Level(lv.level)


def _convert(eqn, ins) -> Level:
    src_dt = np.dtype(eqn.invars[0].aval.dtype)
    dst_dt = np.dtype(eqn.params["new_dtype"])
    if is_complex(src_dt) and not is_complex(dst_dt):
        return nonlinear(eqn, ins, "a complex-to-real conversion")
    if not is_inexact(dst_dt):
        return nonlinear(eqn, ins, f"a conversion to {dst_dt}")
    return ins[0]


def _keep(eqn, ins) -> list[Level]:
    """Data movement (and pad): affine unless a state-free pad value makes an offset."""
    level = join(ins)
    if eqn.primitive.name == "pad" and ins[1].level == FREE and \
            not is_literal_value(eqn.invars[1], 0):
        level = max(level, AFFINE)
    return [Level(level, lv.sel, lv.coef) for lv in moved(eqn, ins)]


def _indexed(eqn, ins, dep) -> Level:
    """Gathers, dynamic slices and updates, scatters: affine at state-free indices."""
    name = eqn.primitive.name
    n_data = {"gather": 1, "dynamic_slice": 1, "dynamic_update_slice": 2}.get(name)
    if n_data is None:  # scatters: operand, indices, updates
        if 1 in dep:
            return nonlinear(eqn, ins, f"{name} at state-dependent indices")
        return _scatter(eqn, ins, dep)
    if any(i >= n_data for i in dep):
        return nonlinear(eqn, ins, f"{name} at state-dependent indices")
    op_shape = shape_of(eqn.invars[0])
    if name == "gather":  # a fill for out-of-bounds indices is an offset
        level = max(ins[0].level, AFFINE) if _mode_name(eqn) == "FILL_OR_DROP" else ins[0].level
        return Level(level)
    if name == "dynamic_slice":  # start indices are clamped: a full-size slice is the operand
        whole = tuple(eqn.params["slice_sizes"]) == op_shape
        return ins[0] if whole else Level(ins[0].level)
    level = offset(eqn, ins[:2], None).level
    if shape_of(eqn.invars[1]) == op_shape and ins[1].level > FREE:  # replaces it all
        return Level(level, ins[1].sel, ins[1].coef)
    return Level(level)


def _scatter(eqn, ins, dep) -> Level:
    name = eqn.primitive.name
    operand, updates = ins[0], ins[2]
    if name == "scatter" and eqn.params.get("update_jaxpr") is not None:
        return nonlinear(eqn, ins, "a scatter that applies a function (.at[].apply)")
    if name in ("scatter-add", "scatter_add", "scatter-sub", "scatter_sub"):
        # state-free updates are offsets: every element keeps its operand element
        return offset(eqn, [operand, updates], 0 if updates.level == FREE else None)
    if name == "scatter":
        return Level(offset(eqn, [operand, updates], None).level)
    if name in ("scatter-mul", "scatter_mul") and dep == [0]:
        return Level(operand.level)
    return nonlinear(eqn, ins, f"{name} of a state-dependent value")


__all__ = ["primitive_rule", "nonlinear_rule"]
