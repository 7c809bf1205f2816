r"""Semirings, and a step's jaxpr read in one: what the semiring pass and scan share.

A semiring ``(K, ⊕, ⊗, 0̄, 1̄)`` turns recurrences that are nonlinear in ordinary arithmetic
into linear ones: with ``(A ⊗ h)_i = ⊕_j A_ij ⊗ h_j``, a step

.. math::  h' = A_t ⊗ h ⊕ b_t

is an *affine map in that algebra* (``b_t = 0̄``: linear), maps compose as
``(A_2, b_2) ∘ (A_1, b_1) = (A_2 ⊗ A_1, A_2 ⊗ b_1 ⊕ b_2)`` -- associative, because ``⊗``
distributes over ``⊕`` -- and all ``T`` states are one associative scan.  The algebras:

=============== ============= ========== ====== ====== ===================================
key             ⊕             ⊗          0̄      1̄      a user writes
=============== ============= ========== ====== ====== ===================================
``logsumexp``   log-sum-exp   ``+``      -inf   0      ``logsumexp(α[:, None] + logA, 0)``
``max-plus``    ``max``       ``+``      -inf   0      ``max(δ[:, None] + logA, 0)``
``min-plus``    ``min``       ``+``      +inf   0      ``min(d[:, None] + W, 0)``
``max-times``   ``max``       ``×``      -inf   1      ``max(a * m, x)``, ``a ≥ 0``
``min-times``   ``min``       ``×``      +inf   1      ``min(a * m, x)``, ``a ≥ 0``
``plus-times``  ``+``         ``×``      0      1      ``u / sum(u)``, ``u = Aᵀ α ⊙ b``
=============== ============= ========== ====== ====== ===================================

``max-times``/``min-times`` are semirings on the state only elementwise (``a (max(u, v)) =
max(a u, a v)`` needs ``a ≥ 0``, which the runtime checks on the coefficients; a ``max``
over several state elements times coefficients would also need a nonnegative state), so
only diagonal stages use them.  ``plus-times`` is ordinary arithmetic: an affine stage is
the ordinary scan's; here it appears only **normalised**.

Normalised (projective) steps
-----------------------------
``h' = u ⊘ c(u)`` with ``u = A_t ⊗ h`` linear and ``c`` a ⊗-scalar that is itself linear in
``u`` (``sum(u)`` in ``plus-times``; ``logsumexp(u)`` in ``logsumexp``) is homogeneous of
degree 0: ``f(λ ⊗ h) = f(h)``.  So ``h_t = f_t(β_{t-1})`` for ``β_t = A_t ⊗ β_{t-1}``
(``β_{-1} = h_0``) up to *any* ⊗-scalar, which the scan divides out as it goes (no
underflow however long the sequence).

Reading a step in a semiring
----------------------------
``interpret`` walks the jaxpr (into calls: ``jit``, ``custom_jvp``/``custom_vjp``
functions, whose *values* are what counts here) and gives every value a level:

* free -- reads no state;
* ``Lin(affine)`` -- ``A ⊗ h`` (``affine``: ``⊕ b``) for state-free ``A``, ``b``;
* ``Norm`` -- ``u ⊘ c`` as above (only as a new state);
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

The log-sum-exp idiom.  ``jax.nn.logsumexp(e, axes)`` lowers to ``s = stop_gradient(
select(isfinite(max(e)), max(e), 0))``, ``log(sum(exp(e - s))) + s``: a shift ``s`` that is a
nonlinear function of the state.  ``log Σ exp(e - s) + s = logsumexp(e)`` for any finite
``s`` constant along the reduced axes, so ``s`` may be anything (``Other``); the rule
checks that the same value is subtracted (broadcast along exactly the reduced axes) and
added back, and that ``exp``, the sum over those axes and ``log`` come in between.  ``log(
sum(exp(e)))`` without a shift is the same reduction.

Coefficients are read off values, exactly
-----------------------------------------
``evaluate`` runs the jaxpr in two modes besides the plain one:

* ``"linear"``: every offset point gets ``0̄`` instead of its free value and every
  normalisation ``⊘ c`` gets ``1̄`` -- the step's linear part ``h ↦ A ⊗ h``; evaluated at
  the algebra's unit vectors (``1̄`` on one element per block, ``0̄`` elsewhere) it gives the
  columns of ``A`` exactly (``⊕`` with ``0̄`` is exact in every algebra);
* ``"offset"``: every read of a purely linear value gives ``0̄`` -- the offset ``b``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import _jax_adapter as jx

_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- algebras

@dataclasses.dataclass(frozen=True)
class Algebra:
    """One semiring (module docstring).  ``plus``: ``lse``/``max``/``min``/``sum``;
    ``times``: ``add``/``mul``."""

    key: str
    name: str
    plus: str
    times: str
    zero: float
    one: float
    dense: bool = True  # whether ``A`` may couple several state elements

    # -- elementwise ------------------------------------------------------------------
    def oplus(self, a, b):
        if self.plus == "lse":
            return jnp.logaddexp(a, b)
        if self.plus == "max":
            return jnp.maximum(a, b)
        if self.plus == "min":
            return jnp.minimum(a, b)
        return a + b

    def otimes(self, a, b):
        """``a ⊗ b``; ``0̄`` absorbs (``0 × -inf`` is ``0̄`` in ``max-times``)."""
        if self.times == "add":
            return a + b
        out = a * b
        if self.zero != 0:
            zero = jnp.asarray(self.zero, out.dtype)
            out = jnp.where((a == zero) | (b == zero), zero, out)
        return out

    def reduce(self, x, axis):
        if self.plus == "lse":
            return _logsumexp(x, axis)
        if self.plus == "max":
            return jnp.max(x, axis=axis)
        if self.plus == "min":
            return jnp.min(x, axis=axis)
        return jnp.sum(x, axis=axis)

    def zeros(self, shape, dtype):
        return jnp.full(shape, self.zero, dtype)

    def ones(self, shape, dtype):
        return jnp.full(shape, self.one, dtype)

    # -- matrices (blocks: ``(..., k, k)``) -----------------------------------------------
    def matvec(self, A, v):
        """``(A ⊗ v)_i = ⊕_j A_ij ⊗ v_j``."""
        if self.plus == "sum":
            return jnp.einsum("...ij,...j->...i", A, v, precision=_HIGHEST)
        return self.reduce(self.otimes(A, v[..., None, :]), -1)

    def matmul(self, A, B):
        """``(A ⊗ B)_ik = ⊕_j A_ij ⊗ B_jk`` (log-sum-exp: a shifted ordinary matmul)."""
        if self.plus == "sum":
            return jnp.einsum("...ij,...jk->...ik", A, B, precision=_HIGHEST)
        if self.plus == "lse":
            a = _finite_max(A, -1, keepdims=True)       # per row of A
            b = _finite_max(B, -2, keepdims=True)       # per column of B
            prod = jnp.einsum("...ij,...jk->...ik", jnp.exp(A - a), jnp.exp(B - b),
                              precision=_HIGHEST)
            return jnp.log(prod) + a + b
        return self.reduce(self.otimes(A[..., :, :, None], B[..., None, :, :]), -2)

    # -- normalisation (projective steps) ------------------------------------------------
    def scale_of(self, x, axes):
        """A ⊗-invertible scalar of ``x`` over ``axes`` to divide by (keepdims)."""
        if self.times == "add":
            return _finite_max(x, axes, keepdims=True)
        mag = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
        return jnp.where((mag > 0) & jnp.isfinite(mag), mag, jnp.ones((), x.dtype))

    def divide(self, x, c):
        return x - c if self.times == "add" else x / c


def _finite_max(x, axis, keepdims=False):
    m = jnp.max(x, axis=axis, keepdims=keepdims)
    return jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, jnp.zeros((), m.dtype)))


def _logsumexp(x, axis):
    m = _finite_max(x, axis, keepdims=True)
    return jnp.log(jnp.sum(jnp.exp(x - m), axis=axis)) + jnp.squeeze(m, axis)


_INF = float("inf")
ALGEBRAS: dict[str, Algebra] = {a.key: a for a in (
    Algebra("logsumexp", "log-sum-exp/+", "lse", "add", -_INF, 0.0),
    Algebra("max-plus", "max/+", "max", "add", -_INF, 0.0),
    Algebra("min-plus", "min/+", "min", "add", _INF, 0.0),
    Algebra("max-times", "max/×", "max", "mul", -_INF, 1.0, dense=False),
    Algebra("min-times", "min/×", "min", "mul", _INF, 1.0, dense=False),
    Algebra("plus-times", "+/× (normalised)", "sum", "mul", 0.0, 1.0),
)}


# ----------------------------------------------------------------------------- levels

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


# ----------------------------------------------------------------------------- interpreter

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


class Interpreter:
    """Levels (and, given values, the values in a mode) of a jaxpr in one algebra."""

    def __init__(self, algebra: Algebra, mode: str | None = None):
        self.alg = algebra
        self.mode = mode  # None (levels only), "plain", "linear", "offset"
        self.progress = 0  # ⊕ operations applied to linear values (how close it came)
        self.touched = 0   # ⊕-like operations applied to any state-dependent value
        self.offsets = 0
        self.normalisations = 0
        self.nonneg: list[Any] = []  # (``×`` algebras) coefficients that must be >= 0

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

    # -- walking ------------------------------------------------------------------------
    def run(self, closed, levels: Sequence[Any], values: Sequence[Any] | None = None):
        """``(out levels, out values or None)``."""
        jaxpr = closed.jaxpr
        env: dict[Any, Any] = {}
        vals: dict[Any, Any] = {}
        for v, c in zip(jaxpr.constvars, closed.consts):
            env[v] = None
            vals[v] = c
        for v, lv in zip(jaxpr.invars, levels):
            env[v] = lv
        if values is not None:
            vals.update(zip(jaxpr.invars, values))

        def level(atom):
            return None if jx.is_literal(atom) else env.get(atom)

        def value(atom):
            if jx.is_literal(atom):
                return jx.literal_value(atom)
            v = vals[atom]
            if self.mode == "offset" and isinstance(env.get(atom), Lin) and \
                    not env[atom].affine:
                return self.alg.zeros(atom.aval.shape, atom.aval.dtype)
            return v

        for eqn in jaxpr.eqns:
            ins = [level(a) for a in eqn.invars]
            if all(lv is None for lv in ins):
                outs, action = [None] * len(eqn.outvars), None
            else:
                outs, action = self.rule(eqn, ins)
            if action is not None and action[0] == "call":
                sub_vals = None if values is None else [value(a) for a in eqn.invars]
                outs, out_vals = self.run(action[1], ins, sub_vals)
                if out_vals is None:
                    out_vals = [None] * len(eqn.outvars)
            elif values is not None:
                invals = [value(a) for a in eqn.invars]
                if self.mode == "linear" and action is not None:
                    kind, i = action
                    atom = eqn.invars[i]
                    fill = self.alg.zero if kind == "zero" else self.alg.one
                    invals[i] = jnp.full(atom.aval.shape, fill, atom.aval.dtype)
                out_vals = jx.bind_eqn(eqn, invals)
                if self.mode is not None and self.nonneg and self.nonneg[-1][0] is eqn:
                    _, i = self.nonneg[-1]
                    coef = invals[i]
                    self.nonneg[-1] = (eqn, coef if eqn.primitive.name == "mul"
                                       else 1 / coef)
            else:
                out_vals = [None] * len(eqn.outvars)
            for v, lv, val in zip(eqn.outvars, outs, out_vals):
                if not isinstance(v, jx.DropVar):
                    env[v] = lv
                    vals[v] = val
        out_levels = [level(a) for a in jaxpr.outvars]
        if values is None:
            return out_levels, None
        out_values = []
        for a in jaxpr.outvars:
            if jx.is_literal(a):
                out_values.append(jx.literal_value(a))
            else:
                out_values.append(value(a) if self.mode == "offset" else vals[a])
        return out_levels, out_values


# ----------------------------------------------------------------------------- a stage

@dataclasses.dataclass(frozen=True)
class Claim:
    """What a stage is in its algebra: ``affine`` (an offset ``b``), ``normalised``
    (projective)."""

    algebra: str
    affine: bool = False
    normalised: bool = False

    @property
    def alg(self) -> Algebra:
        return ALGEBRAS[self.algebra]

    def describe(self) -> str:
        kind = ("normalised linear" if self.normalised else
                "affine" if self.affine else "linear")
        alg = self.alg
        if self.algebra == "plus-times":
            return "linear up to a per-step normalisation (+/×)"
        return f"{kind} over the {alg.name} semiring (⊕ = {_PLUS[alg.plus]}, ⊗ = " \
               f"{'+' if alg.times == 'add' else '×'})"


_PLUS = {"lse": "log-sum-exp", "max": "max", "min": "min", "sum": "+"}


def seeds(n_state: int, stage_leaves: Sequence[int], n_other: int) -> list:
    chosen = set(stage_leaves)
    return [Lin() if i in chosen else None for i in range(n_state)] + [None] * n_other


def analyse(closed, n_state: int, stage_leaves: Sequence[int], n_other: int,
            algebra: Algebra) -> tuple[Claim | None, str, tuple]:
    """``(claim or None, why not, progress)`` of the stage's leaves in ``algebra``;
    ``progress``: ``(⊕ applied to linear values, ⊕-like operations on the state)``, how
    close it came."""
    interp = Interpreter(algebra)
    outs, _ = interp.run(closed, seeds(n_state, stage_leaves, n_other))
    mine = [outs[i] for i in stage_leaves]
    progress = (interp.progress, interp.touched)
    if any(isinstance(lv, Other) for lv in mine):
        why = next(lv.reason for lv in mine if isinstance(lv, Other))
        return None, why, progress
    if any(isinstance(lv, (_Bcast, _Centered)) for lv in mine):
        return None, "an incomplete log-sum-exp", progress
    if interp.progress == 0 and interp.normalisations == 0:
        return None, f"no {_PLUS[algebra.plus]} of the state", (0, 0)
    norm = [isinstance(lv, Norm) for lv in mine]
    if any(norm) and not all(norm):
        return None, "some new states are normalised and others not", progress
    if algebra.plus == "sum" and not all(norm):
        return None, "not normalised (an affine +/× stage is the ordinary scan's)", (0, 0)
    affine = any(isinstance(lv, Lin) and lv.affine for lv in mine)
    return Claim(algebra.key, affine=affine, normalised=all(norm) and bool(norm)), "", \
        progress


def evaluator(closed, n_state: int, stage_leaves: Sequence[int], n_other: int,
              claim: Claim, mode: str):
    """``(h leaves, x leaves, p leaves) -> (h' leaves, coefficients that must be ≥ 0)`` with
    the step evaluated in ``mode`` (the list is empty but for the ``×`` algebras)."""
    levels = seeds(n_state, stage_leaves, n_other)

    def call(h_leaves, x_leaves, p_leaves):
        interp = Interpreter(claim.alg, mode)
        _, out = interp.run(closed, levels, [*h_leaves, *x_leaves, *p_leaves])
        return out, [c for _, c in interp.nonneg]

    return call


# ----------------------------------------------------------------------------- coefficients

def _diagonal(structure) -> bool:
    return structure.jacobian in ("diagonal", "zero")


def extract(f_lin, f_off, x, n: int, dtype, structure, claim: Claim):
    """One step's ``(A, b, nonneg)``: ``A`` as ``(n,)`` (diagonal) or ``(m, k, k)`` blocks
    (a coloured dense structure: one ``n × n`` block), ``b`` ``(n,)`` or None, and the
    ``×`` coefficients that must be ``≥ 0`` -- from the step in ``"linear"`` mode at the
    unit vectors of the structure's colouring and in ``"offset"`` mode (module
    docstring).  ``f_lin``/``f_off``: ``(z, x) -> (z', coefficients)``."""
    from ._coefficients import structure_tangents
    alg = claim.alg
    if _diagonal(structure):
        units = jnp.full((1, n), alg.one, dtype)
    else:
        on = structure_tangents(structure, n, np.float32) > 0
        units = jnp.where(jnp.asarray(on), alg.one, alg.zero).astype(dtype)
    cols, nonneg = jax.vmap(lambda u: f_lin(u, x), out_axes=(-1, 0))(units)
    b = None if f_off is None else f_off(jnp.zeros((n,), dtype), x)[0]
    A = cols[..., 0] if _diagonal(structure) else place(cols, structure, n, alg)
    return A, b, nonneg


def block_layout(structure, n: int) -> np.ndarray:
    """``(m, k)`` element indices of the blocks ``A`` is laid out in (``-1``: padding)."""
    return np.arange(n)[None, :] if structure.colours is not None else structure.blocks


def place(cols, structure, n: int, alg: Algebra):
    """``cols[..., i, c]`` (the step at colour ``c``'s unit vector) in the block layout:
    ``0̄`` outside the pattern and in padding."""
    zero = jnp.asarray(alg.zero, cols.dtype)
    if structure.colours is not None:
        full = jnp.take(cols, jnp.asarray(structure.colours), axis=-1)
        return jnp.where(jnp.asarray(structure.pattern), full, zero)[..., None, :, :]
    blocks = structure.blocks
    pad = jnp.full(cols.shape[:-2] + (1, cols.shape[-1]), zero)
    padded = jnp.concatenate([cols, pad], axis=-2)
    A = jnp.take(padded, jnp.asarray(np.where(blocks >= 0, blocks, n)), axis=-2)
    return jnp.where(jnp.asarray(blocks >= 0)[:, None, :], A, zero)


def apply_map(alg: Algebra, A, z, structure, n: int):
    """``A ⊗ z`` on the flat state ``z`` (``(n,)``)."""
    if _diagonal(structure):
        return alg.otimes(A, z)
    from ._coefficients import permute_in, permute_out
    blocks = block_layout(structure, n)
    zb = jnp.where(jnp.asarray(blocks >= 0), permute_in(z, blocks),
                   jnp.asarray(alg.zero, z.dtype))
    return permute_out(alg.matvec(A, zb), blocks, n)


__all__ = ["extract", "place", "apply_map", "block_layout", "Algebra", "ALGEBRAS", "Claim", "Interpreter", "Lin", "Norm", "Other", "analyse",
           "evaluator", "describe", "seeds"]
