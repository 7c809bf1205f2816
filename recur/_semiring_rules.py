r"""A step's jaxpr read in a semiring, one equation at a time: the level of every value.

Levels
------
``Rules.rule`` gives every output of an equation a level from its operands' levels (the
walk, ``recur._semiring_analysis.Interpreter``, goes into calls: ``jit``,
``custom_jvp``/``custom_vjp`` functions, whose *values* are what counts here):

* free -- reads no state;
* ``Lin(affine)`` -- ``A ⊗ h`` (``affine``: ``⊕ b``) for state-free ``A``, ``b``;
* ``Norm`` -- ``u ⊘ c`` (a normalised step, ``recur._semiring_algebra``; only as a new
  state);
* anything else -- ``Other``, with the reason (the first operation that broke it, with the
  user's source line).

What keeps ``Lin``: ``⊗`` with a free value (``add``/``sub`` of one for the ``+`` algebras,
``mul``/``div`` by one for the ``×`` ones), ``⊕`` of two ``Lin`` values (elementwise
``max``/``min``/``logaddexp``, reductions ``reduce_max``/``reduce_min``, the log-sum-exp
idiom below, ``reduce_sum``/``dot_general`` with a free side in ``plus-times``), data
movement, choices on free predicates, concatenation, and ``stop_gradient`` (coefficients
are read off values, never JVPs; derivatives come from the step's own JVP).  A free value
that enters a ``⊕`` (``max(m, x)``, a free piece of a concatenation, a free case of a
choice) is an **offset point**: ``b`` comes from there.  ``⊗`` of two state-dependent
values (coefficients that read the state), a negation, ``exp``/``tanh``/..., control flow
on the state: ``Other``.

The log-sum-exp idiom
---------------------
``jax.nn.logsumexp(e, axes)`` lowers to ``s = stop_gradient(select(isfinite(max(e)),
max(e), 0))``, ``log(sum(exp(e - s))) + s``: a shift ``s`` that is a nonlinear function of
the state.  ``log Σ exp(e - s) + s = logsumexp(e)`` for any finite ``s`` constant along the
reduced axes, so ``s`` may be anything (``Other``); the rule checks that the same value is
subtracted (broadcast along exactly the reduced axes) and added back, and that ``exp``, the
sum over those axes and ``log`` come in between.  ``log(sum(exp(e)))`` without a shift is
the same reduction.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from . import _jax_adapter as jx
from ._semiring_algebra import Algebra


@dataclasses.dataclass(frozen=True, eq=False)
class Lin:
    """``A ⊗ h`` (``⊕ b`` when ``affine``)."""
    affine: bool = False


@dataclasses.dataclass(frozen=True, eq=False)
class Norm:
    """``u ⊘ c(u)``: linear up to a ⊗-scalar."""


@dataclasses.dataclass(frozen=True, eq=False)
class Other:
    """Not linear in the algebra; ``reason`` says why."""
    reason: str


@dataclasses.dataclass(frozen=True, eq=False)
class _Bcast:
    """A broadcast of the ``Other`` value ``base`` (a log-sum-exp shift candidate): constant
    along ``const`` (axes of the broadcast value), ``dims``: where ``base``'s axes went."""
    base: Other
    const: frozenset
    dims: tuple


@dataclasses.dataclass(frozen=True, eq=False)
class _Centered:
    """``e - s`` (stage ``exp`` and ``sum`` follow) for ``e`` ``Lin``; ``base`` the shift
    (``None``: no shift), ``const`` the axes along which the shift is constant."""
    stage: str  # centered | exp | sum | log
    lin: Lin
    base: Other | None
    const: frozenset
    dims: tuple = ()


_LINEAR_KINDS = (Lin, Norm)


def is_partial(level) -> bool:
    """Whether ``level`` is a piece of a log-sum-exp not yet completed."""
    return isinstance(level, (_Bcast, _Centered))


def describe(level) -> str:
    if level is None:
        return "free"
    if isinstance(level, Lin):
        return "affine" if level.affine else "linear"
    if isinstance(level, Norm):
        return "normalised linear"
    return "not linear"


def _where(eqn) -> str:
    src = jx.eqn_source(eqn)
    return f" (at {src})" if src else ""


_MOVEMENT = frozenset(
    "reshape squeeze expand_dims broadcast_in_dim transpose slice rev tile copy copy_p "
    "reduce_precision".split())
_IDENTITY = frozenset({"optimization_barrier", "pvary", "sharding_constraint", "reshard",
                       "layout_constraint", "with_memory_space_constraint"})
_INEXACT_KINDS = "fc"
_TOUCH = {"lse": frozenset({"reduce_max", "exp", "log", "reduce_sum", "custom_jvp_call"}),
          "max": frozenset({"max", "reduce_max"}), "min": frozenset({"min", "reduce_min"}),
          "sum": frozenset({"div", "reduce_sum", "dot_general"})}


def _shape(atom) -> tuple:
    return tuple(atom.aval.shape)


def _literal_is(atom, value) -> bool:
    if not jx.is_literal(atom):
        return False
    v = np.asarray(jx.literal_value(atom))
    return bool(v.size) and bool(np.all(v == value))


def _bcast_const(out_shape, in_shape, dims) -> frozenset:
    """Axes of a ``broadcast_in_dim`` result along which it is constant."""
    const = set(range(len(out_shape))) - set(dims)
    const |= {d for d, s in zip(dims, in_shape) if s == 1 and out_shape[d] != 1}
    return frozenset(const)


class Rules:
    """The level rules of one algebra, and what they counted over the equations read."""

    def __init__(self, algebra: Algebra):
        self.alg = algebra
        self.progress = 0  # ⊕ operations applied to linear values (how close it came)
        self.touched = 0   # ⊕-like operations applied to any state-dependent value
        self.offsets = 0
        self.normalisations = 0
        # (``×`` algebras) coefficients that must be >= 0: ``(eqn, operand)``, the walk
        # replacing the operand by the coefficient's value when it has values
        self.nonneg: list[Any] = []

    # -- helpers ------------------------------------------------------------------------
    def _other(self, eqn, ins, why) -> Other:
        """A new ``Other`` (every value its own: the log-sum-exp rule matches shifts by
        identity), with the reason of the first operand that already was one."""
        for lv in ins:
            if isinstance(lv, Other):
                return Other(lv.reason)
            if isinstance(lv, _Bcast):
                return Other(lv.base.reason)
        for lv in ins:
            if isinstance(lv, _Centered):
                return Other(f"a log-sum-exp that is not completed (`{eqn.primitive.name}` "
                             f"after its {lv.stage} step){_where(eqn)}")
        return Other(f"{why}{_where(eqn)}")

    def _is_oplus(self, name) -> bool:
        plus = self.alg.plus
        return (plus == "max" and name == "max") or (plus == "min" and name == "min")

    def _is_oplus_reduce(self, name) -> bool:
        plus = self.alg.plus
        return (plus == "max" and name == "reduce_max") or \
            (plus == "min" and name == "reduce_min") or (plus == "sum" and name == "reduce_sum")

    # -- one equation -------------------------------------------------------------------
    def rule(self, eqn, ins: list) -> tuple[list, Any]:
        """``(out levels, action)``; action: None, ``("zero", i)`` (offset point: operand
        ``i``), ``("one", i)`` (normalisation point), ``("call", body)``."""
        name = eqn.primitive.name
        alg = self.alg
        dep = [i for i, lv in enumerate(ins) if lv is not None]
        lins = [i for i in dep if isinstance(ins[i], Lin)]
        plain = len(lins) == len(dep)
        out_dtype = np.dtype(eqn.outvars[0].aval.dtype) if eqn.outvars else None
        if name in _TOUCH[alg.plus]:
            self.touched += 1

        if name in _IDENTITY:
            return list(ins), None
        if name == "stop_gradient" or (name == "convert_element_type" and out_dtype is not None
                                       and out_dtype.kind in _INEXACT_KINDS
                                       and np.dtype(eqn.invars[0].aval.dtype).kind in
                                       _INEXACT_KINDS):
            return [ins[0]], None
        if name == "custom_jvp_call" and eqn.params.get("name") == "logaddexp" and \
                alg.plus == "lse":
            return self._oplus(eqn, ins, dep)
        body = jx.call_body(eqn)
        if body is not None:
            return None, ("call", body)

        if name in _MOVEMENT:
            lv = ins[0]
            if isinstance(lv, _LINEAR_KINDS):
                return [lv], None
            if name == "broadcast_in_dim" and isinstance(lv, Other):
                dims = tuple(eqn.params["broadcast_dimensions"])
                return [_Bcast(lv, _bcast_const(_shape(eqn.outvars[0]), _shape(eqn.invars[0]),
                                                dims), dims)], None
            return [self._other(eqn, ins, f"{name} of a partial log-sum-exp")], None
        if name in ("concatenate", "pad", "select_n"):
            return self._gathering(eqn, ins, dep, lins, plain)
        if name in ("gather", "dynamic_slice"):
            if dep == [0] and isinstance(ins[0], _LINEAR_KINDS):
                return [ins[0]], None
            return [self._other(eqn, ins, f"{name} at state-dependent indices")], None
        if self._is_oplus(name):
            return self._oplus(eqn, ins, dep)
        if self._is_oplus_reduce(name) and plain and dep == [0]:
            self.progress += 1
            return [ins[0]], None
        if alg.times == "add":
            return self._additive(eqn, ins, dep, lins, plain)
        return self._multiplicative(eqn, ins, dep, lins, plain)

    def _oplus(self, eqn, ins, dep):
        """Elementwise ``⊕``: of linear values, or with a free offset."""
        if not all(isinstance(ins[i], Lin) for i in dep):
            return [self._other(eqn, ins, f"{eqn.primitive.name} of a value that is not "
                                          "linear")], None
        self.progress += 1
        if len(dep) == len(ins):
            return [Lin(any(ins[i].affine for i in dep))], None
        free = [i for i in range(len(ins)) if ins[i] is None][0]
        if _literal_is(eqn.invars[free], self.alg.zero):
            return [Lin(ins[dep[0]].affine)], None
        self.offsets += 1
        return [Lin(True)], ("zero", free)

    def _gathering(self, eqn, ins, dep, lins, plain):
        name = eqn.primitive.name
        if name == "select_n":
            if ins[0] is not None:
                return [self._other(eqn, ins, "a choice on a state-dependent predicate")], None
            cases = list(range(1, len(ins)))
        elif name == "pad":
            if ins[1] is not None:
                return [self._other(eqn, ins, "a pad by a state-dependent value")], None
            cases = [0, 1]
        else:
            cases = list(range(len(ins)))
        if not all(isinstance(ins[i], Lin) or ins[i] is None for i in cases):
            return [self._other(eqn, ins, f"{name} of a value that is not linear")], None
        free = [i for i in cases if ins[i] is None
                and not _literal_is(eqn.invars[i], self.alg.zero)]
        affine = any(ins[i].affine for i in cases if ins[i] is not None)
        if not free:
            return [Lin(affine)], None
        if self.alg.plus == "sum":
            return [self._other(eqn, ins, f"{name} with a state-free part (an offset)")], None
        if len(free) > 1:
            return [self._other(eqn, ins, f"{name} with several state-free parts")], None
        self.offsets += 1
        return [Lin(True)], ("zero", free[0])

    def _additive(self, eqn, ins, dep, lins, plain):
        """``⊗ = +`` (log-sum-exp, max/+, min/+)."""
        name = eqn.primitive.name
        alg = self.alg
        if name in ("add", "add_any"):
            if len(dep) == 1 and isinstance(ins[dep[0]], Lin):
                return [ins[dep[0]]], None
            if len(dep) == 2:
                a, b = ins
                for x, y in ((a, b), (b, a)):
                    if isinstance(x, _Centered) and x.stage == "log" and y is x.base:
                        self.progress += 1
                        return [x.lin], None
                if plain:
                    return [self._other(eqn, ins, "a ⊗ (+) of two state-dependent values "
                                                  "(coefficients that read the state)")], None
        if name == "sub":
            a, b = ins
            if isinstance(a, Lin) and b is None:
                return [a], None
            if alg.plus == "lse" and isinstance(a, Lin) and isinstance(b, _Bcast):
                return [_Centered("centered", a, b.base, b.const, b.dims)], None
            if isinstance(a, Lin) and not a.affine and isinstance(b, Lin) and not b.affine:
                self.normalisations += 1
                return [Norm()], ("one", 1)
            if plain and len(dep) == 2:
                return [self._other(eqn, ins, "a difference of two state-dependent values")], \
                    None
            if plain and dep == [1]:
                return [self._other(eqn, ins, "a negated state (ordinary subtraction of it)")], \
                    None
        if name == "mul" and len(dep) == 1 and plain and \
                _literal_is(eqn.invars[1 - dep[0]], 1):
            return [ins[dep[0]]], None
        if alg.plus == "lse":
            out = self._lse_idiom(eqn, ins, dep)
            if out is not None:
                return [out], None
        if alg.plus == "lse" and name in ("reduce_max", "max", "is_finite", "select_n") \
                and plain:
            return [Other(f"{name} of a state-dependent value outside the log-sum-exp "
                          f"idiom{_where(eqn)}")], None
        what = {"mul": "an ordinary product (⊗ here is +)", "neg": "a negation",
                "div": "a division"}.get(name, f"`{name}` of a state-dependent value")
        return [self._other(eqn, ins, what)] * len(eqn.outvars), None

    def _lse_idiom(self, eqn, ins, dep):
        """``exp``, ``sum`` over the shift's constant axes, ``abs``, ``log`` of a centred
        linear value (module docstring); None when ``eqn`` is not the next piece."""
        name = eqn.primitive.name
        if len(dep) != 1:
            return None
        lv = ins[dep[0]]
        if name == "exp":
            if isinstance(lv, Lin):
                return _Centered("exp", lv, None, frozenset())
            if isinstance(lv, _Centered) and lv.stage == "centered":
                return dataclasses.replace(lv, stage="exp")
        if not isinstance(lv, _Centered):
            return None
        if name == "reduce_sum" and lv.stage == "exp":
            axes = frozenset(eqn.params["axes"])
            if lv.base is None:
                return dataclasses.replace(lv, stage="sum", const=frozenset())
            if not axes <= lv.const:
                return None
            kept = [d for d in range(len(_shape(eqn.invars[0]))) if d not in axes]
            if tuple(kept) != tuple(lv.dims):  # the base's axes, in order, are what remains
                return None
            return dataclasses.replace(lv, stage="sum")
        if name == "abs" and lv.stage == "sum":
            return lv
        if name == "log" and lv.stage == "sum":
            self.progress += 1
            return lv.lin if lv.base is None else dataclasses.replace(lv, stage="log")
        return None

    def _multiplicative(self, eqn, ins, dep, lins, plain):
        """``⊗ = ×`` (max/×, min/×, +/× normalised)."""
        name = eqn.primitive.name
        alg = self.alg
        if name == "mul" and len(dep) == 1 and plain:
            if alg.plus != "sum":
                self.nonneg.append((eqn, 1 - dep[0]))
            return [ins[dep[0]]], None
        if name == "div" and dep == [0] and plain:
            if alg.plus != "sum":
                self.nonneg.append((eqn, 1))
            return [ins[0]], None
        if alg.plus == "sum":
            if name in ("add", "add_any", "sub") and len(dep) == 2 and plain and \
                    not any(ins[i].affine for i in dep):
                return [Lin()], None
            if name == "neg" and plain:
                return [ins[0]], None
            if name in ("reduce_sum", "cumsum") and plain:
                return [ins[0]], None
            if name == "dot_general" and len(dep) == 1 and plain:
                return [ins[dep[0]]], None
            if name == "div" and dep == [0, 1] and plain and \
                    not ins[0].affine and not ins[1].affine:
                self.normalisations += 1
                return [Norm()], ("one", 1)
            if name in ("add", "add_any", "sub") and plain:
                return [self._other(eqn, ins, "an offset (a normalised +/× step must be "
                                              "linear before its normalisation)")], None
        what = {"add": "an ordinary sum (⊕ here is max/min)", "mul":
                "a product of two state-dependent values", "neg": "a negation"}.get(
            name, f"`{name}` of a state-dependent value")
        if alg.plus in ("max", "min") and name in ("reduce_max", "reduce_min") and plain:
            what = (f"{name} over several state elements: with ⊗ = × this is linear only for "
                    "nonnegative states (elementwise steps only)")
        return [self._other(eqn, ins, what)] * len(eqn.outvars), None



__all__ = ["Rules", "Lin", "Norm", "Other", "is_partial", "describe"]
