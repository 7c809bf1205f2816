"""The method registry: one frozen description per method, read by every layer.

A method is a user-facing string (``method="quasi-deer"``, a plan's JSON); everything else
recur knows about it lives here, once: how the runtime evaluates it (``family``), the
linearisation ``Ã_t`` an iterative method solves with, whether it takes sliding windows,
its default iteration cap, the iterations the cost model expects, the one-line "why" the
plan prints, whether it has a sequence-parallel form, and whether ``auto`` considers it.

The iterative methods are one scheme (``runtime/_iterative.py``): each iteration solves the
linear recurrence ``z_t = f(z̃_{t-1}) + Ã_t (z_{t-1} - z̃_{t-1})`` exactly; they differ only
in ``Ã`` (``linearisation``) and in damping (``damped``: ELK's trust region).

Adding a method is one entry here plus the module that evaluates its family.
"""

from __future__ import annotations

import dataclasses

from ._errors import PlanError

# Largest Lyapunov exponent (per step, natural log) above which a system counts as chaotic:
# the iterative solvers stop early above it, and ``auto`` keeps the loop for stages whose
# exponent along concrete values is above it.
CHAOTIC_LYAPUNOV = 0.05
# ``λ T`` above which a whole-sequence solve is hopeless even with a small ``λ``: errors are
# amplified by ``e^10 ≈ 2e4`` along the sequence (measured: Lorenz-96, λ = 0.0136, T = 1000:
# deer and quasi-deer diverge; T = 200 converges with windows).
CHAOTIC_GROWTH = 10.0


@dataclasses.dataclass(frozen=True)
class Method:
    """What recur knows about one method.

    ``family``: ``"loop"`` (the sequential ``lax.scan``), ``"scan"`` (an exact associative
    scan of an affine stage), ``"semiring"`` (an exact associative scan of a stage that is
    linear over a semiring, ``runtime/_semiring.py``), ``"iterative"`` (the DEER family) or
    ``"chunked"`` (the chunkwise form of a whole ``recur.lax.scan`` body,
    ``runtime/_chunked.py``).  ``linearisation``
    (iterative only): ``"jacobian"`` (the true, structured Jacobian), ``"diagonal"`` (its
    diagonal), ``"identity"`` or ``"zero"``.  ``newton``: the linearisation is exact, so the
    next correction estimates the error of the current iterate to second order.
    """

    name: str
    family: str
    why: str
    a_tilde: str = ""
    linearisation: str = ""
    damped: bool = False
    windows: bool = False
    default_max_iters: int = 0
    expected_iterations: int = 1
    sharded: bool = True
    auto: bool = False
    needs_jvp: bool = False

    @property
    def iterative(self) -> bool:
        return self.family == "iterative"


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


register(Method(
    "sequential", "loop", why="the plain lax.scan loop: the reference and the fallback",
    expected_iterations=0, auto=True))
register(Method(
    "scan", "scan", why="exact for this affine stage: one associative scan",
    expected_iterations=1, auto=True, needs_jvp=True))
register(Method(
    "semiring", "semiring",
    why="exact for a stage linear over a semiring (log-sum-exp/+, max/+, min/+, max/×, "
        "min/×, normalised +/×): one associative scan in that algebra",
    expected_iterations=1, auto=True, needs_jvp=True))
register(Method(
    "deer", "iterative", linearisation="jacobian", a_tilde="the true Jacobian",
    why="Newton iterations, each an exact scan with the true (structured) Jacobians",
    windows=True, default_max_iters=50, expected_iterations=5, auto=True, needs_jvp=True))
register(Method(
    "quasi-deer", "iterative", linearisation="diagonal", a_tilde="diag of the Jacobian",
    why="quasi-Newton iterations with the exact diagonal of the Jacobian",
    windows=True, default_max_iters=200, expected_iterations=14, auto=True, needs_jvp=True))
register(Method(
    "picard", "iterative", linearisation="identity", a_tilde="identity",
    why="Picard sweeps (Ã = I), for steps of the form h + g(h, x)",
    windows=True, default_max_iters=200, expected_iterations=50, needs_jvp=True))
register(Method(
    "jacobi", "iterative", linearisation="zero", a_tilde="zero",
    why="Jacobi sweeps (Ã = 0), one parallel evaluation of the step each",
    windows=True, default_max_iters=100, expected_iterations=50, needs_jvp=True))
register(Method(
    "elk", "iterative", linearisation="jacobian", damped=True,
    a_tilde="the true Jacobian, damped",
    why="damped Newton (Levenberg-Marquardt via a parallel Kalman smoother) with the true "
        "Jacobians", default_max_iters=100, expected_iterations=5, needs_jvp=True))
register(Method(
    "quasi-elk", "iterative", linearisation="diagonal", damped=True,
    a_tilde="diag of the Jacobian, damped",
    why="damped quasi-Newton (Kalman smoother) with the diagonal of the Jacobian",
    default_max_iters=200, expected_iterations=14, needs_jvp=True))

register(Method(
    "chunked", "chunked",
    why="the chunkwise-parallel form of a decayed linear-attention scan: masked C × C "
        "products inside chunks, a scan over the chunk-boundary states",
    expected_iterations=1, sharded=False, auto=True))

# ``auto`` and ``autotune`` are choices, not methods: they resolve to a registered one.
CHOICES = ("auto", "autotune")


def get(name: str) -> Method:
    """The registered method ``name`` (a ``PlanError`` listing the names otherwise)."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise PlanError(f"unknown method {name!r}; use one of {', '.join(names())}.") from None


def names(*, choices: bool = True) -> tuple[str, ...]:
    """Every method name a user may pass (``auto``/``autotune`` first when ``choices``)."""
    return (CHOICES if choices else ()) + tuple(_REGISTRY)


def iterative() -> tuple[str, ...]:
    return tuple(m.name for m in _REGISTRY.values() if m.iterative)


def with_windows() -> tuple[str, ...]:
    return tuple(m.name for m in _REGISTRY.values() if m.windows)


def sharded() -> tuple[str, ...]:
    return tuple(m.name for m in _REGISTRY.values() if m.sharded)


def is_iterative(name: str) -> bool:
    m = _REGISTRY.get(name)
    return m is not None and m.iterative


__all__ = ["Method", "register", "get", "names", "iterative", "with_windows", "sharded",
           "is_iterative", "CHOICES", "CHAOTIC_LYAPUNOV", "CHAOTIC_GROWTH"]
