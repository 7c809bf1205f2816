"""Every registered method over a shared problem table (``tests/_steps.py``: affine diagonal
and dense, tanh RNN, GRU, LSTM tuple state, a staged Kalman filter, the chaotic logistic map,
an integer counter next to a float state), against the ``lax.scan`` loop (float64, tight)
and ``jax.test_util.check_grads`` (see ``GRADS``); methods that do not apply raise a clear
``PlanError``.

Besides the registry's methods (``recur._methods.names(choices=False)``): ``auto`` and
``gpu`` -- the per-stage methods of ``recur.plan(..., backend="gpu")`` at a long sequence,
run here as a ``{stage: method}`` dict.  The table is representative, not a product: every
method meets every kind of stage it is for (and ``scan`` the ones it refuses), every
problem meets several methods; ``test_every_method_is_tested`` keeps a new method from
slipping through.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import recur
from recur import _methods

from ._steps import PROBLEMS, loop

TOL = dict(rtol=1e-12, atol=1e-12)
AGREE = 1e-9           # converged results against the loop (float64)
GPU_PLAN_LENGTH = 10_000
TIMEOUT = 120          # per case: a hang (issue 16's elk) fails instead of stalling

# (problem, method): forward against the loop.  ``gpu`` on the problems whose GPU plan is
# not already a forced method below (staged, tuple, integer leaf, scan).
FORWARD = [
    ("lstm", "sequential"),
    ("affine-diag", "scan"), ("affine-dense", "scan"),
    ("lstm", "deer"), ("logistic-chaotic", "deer"), ("counter", "deer"),
    ("gru", "quasi-deer"), ("logistic-chaotic", "quasi-deer"),
    ("tanh-rnn", "picard"), ("tanh-rnn", "jacobi"),
    ("tanh-rnn", "elk"), ("gru", "quasi-elk"), ("hmm", "semiring"),
] + [(name, "auto") for name in PROBLEMS] + [
    (name, "gpu") for name in ("affine-dense", "lstm", "kalman", "counter")]

# (problem, method, modes): check_grads at the problem's T_grad.  Derivatives never depend on
# an iterative method's Ã (the tangent solve uses the true Jacobians at the solution), so
# they are checked for each solver module (the scan, the undamped iteration, ELK) and each
# kind of state rather than for every method; forward mode where the reverse mode's
# transposition is not the only thing under test.
GRADS = [
    ("affine-dense", "scan", ("fwd", "rev")), ("logistic-chaotic", "deer", ("fwd", "rev")),
    ("lstm", "deer", ("rev",)), ("counter", "deer", ("rev",)), ("gru", "quasi-deer", ("rev",)),
    ("tanh-rnn", "elk", ("rev",)), ("kalman", "auto", ("rev",)), ("affine-diag", "auto", ("rev",)),
    ("hmm", "semiring", ("rev",)),
]

# ``chunked`` computes a ``recur.lax.scan`` body's outputs (it never returns every state), so
# it has its own case below: gated linear attention, outputs ``Sᵀ q``.
LAX_ONLY = {"chunked"}


def _shapes(tree):
    return jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), tree)


def _plan(problem, T, **kw):
    """The plan from shapes alone (no probes at values, no Lyapunov run: cheap)."""
    h0, xs, params, _ = problem.args(2)
    xs = None if xs is None else jax.ShapeDtypeStruct((T,) + xs.shape[1:], xs.dtype)
    return recur.plan(problem.fn, _shapes(h0), xs, _shapes(params), length=T, **kw)


def _method(problem, method):
    """``method`` as ``recur.scan`` takes it (``gpu``: the GPU plan's stage methods)."""
    if method != "gpu":
        return method
    plan = _plan(problem, GPU_PLAN_LENGTH, backend="gpu")
    return {name: st.method for st in plan.stages for name in st.states}


def _allowed(problem, method, stage) -> set:
    """What a stage may run when ``method`` is asked for."""
    if method in ("auto", "gpu"):
        return set(_methods.names(choices=False))
    allowed = {method}
    if stage.kind in ("linear", "affine"):
        allowed.add("scan")  # a forced iterative method leaves affine stages to the scan
    if problem.name == "counter" and stage.states == ("['k']",):
        allowed = {"sequential"}  # integer state: only the loop computes it exactly
    return allowed


def _close(a, b, tol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_every_method_is_tested():
    names = set(_methods.names(choices=False)) | {"auto", "gpu"}
    assert names - LAX_ONLY <= {m for _, m in FORWARD}
    assert LAX_ONLY <= {m for m, _ in LAX_CASES}
    assert {"scan", "deer", "elk", "auto"} <= {m for _, m, _ in GRADS}
    assert set(PROBLEMS) <= {p for p, _ in FORWARD}


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("name, method", FORWARD)
def test_method_agrees_with_the_loop(name, method):
    problem = PROBLEMS[name]
    h0, xs, params, T = problem.args()
    m = _method(problem, method)
    plan = _plan(problem, T, method=m)
    assert len(plan.stages) == problem.stages
    for stage in plan.stages:
        assert stage.method in _allowed(problem, method, stage), (stage.states, stage.method)
    hs, info = recur.scan(problem.fn, h0, xs, params, length=T, method=m, return_info=True,
                          **TOL)
    ref = loop(problem.fn, h0, xs, params, length=T)
    fell_back = np.asarray(info.fell_back)
    assert np.all(np.asarray(info.converged) | fell_back)
    _close(hs, ref, AGREE)
    if name == "logistic-chaotic" and _methods.is_iterative(method):
        # chaotic: the run stops early and returns the loop's own trajectory
        assert np.all(fell_back)
        _close(hs, ref, 0.0)


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("name, method, modes", GRADS)
def test_method_gradients(name, method, modes):
    problem = PROBLEMS[name]
    h0, xs, params, T = problem.args(problem.T_grad)
    m = _method(problem, method)

    @jax.jit  # one compiled program for the numerical differences, one per mode
    def f(params, xs):
        hs = recur.scan(problem.fn, h0, xs, params, length=T, method=m, **TOL)
        return jax.tree.map(lambda v: v if jnp.issubdtype(v.dtype, jnp.inexact)
                            else jnp.zeros(()), hs)

    if xs is None:
        check_grads(lambda p: f(p, None), (params,), order=1, modes=modes)
    else:
        check_grads(f, (params, xs), order=1, modes=modes)


def _no_jvp(h, x, p):
    """A step forward-mode autodiff cannot go through (``.at[].apply``)."""
    return jnp.tanh(p * h + x).at[0].apply(jnp.sin)


NOT_APPLICABLE = [
    # (problem, method, options, words the message must contain)
    *[(name, "scan", {}, "needs an affine recurrence") for name, p in PROBLEMS.items()
      if not p.affine],
    ("tanh-rnn", "elk", {"window": 4}, "window= works with"),
    ("tanh-rnn", "quasi-elk", {"window": 4}, "window= works with"),
    ("counter", {"['k']": "deer"}, {}, "only the loop computes exactly"),
    ("gru", {"z": "deer"}, {}, "no stage's state"),
    ("gru", "newton", {}, "unknown method"),
    ("tanh-rnn", "semiring", {}, "needs a recurrence that is linear over a semiring"),
    ("gru", "chunked", {}, "needs a recur.lax.scan body"),
    *[("no-jvp", m, {}, "forward-mode") for m in ("deer", "quasi-deer", "elk")],
]


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("name, method, options, words", NOT_APPLICABLE,
                         ids=[f"{n}-{m}-{'-'.join(o)}" for n, m, o, _ in NOT_APPLICABLE])
def test_methods_that_do_not_apply_raise_a_plan_error(name, method, options, words):
    if name == "no-jvp":
        fn, (h0, xs, params, T) = _no_jvp, (jnp.zeros(3), jnp.ones((8, 3)), jnp.asarray(0.5), 8)
    else:
        problem = PROBLEMS[name]
        fn, (h0, xs, params, T) = problem.fn, problem.args(8)
    for call in (recur.plan, recur.scan):
        with pytest.raises(recur.PlanError, match=words):
            call(fn, h0, xs, params, length=T, method=method, **options)


def _gla(S, x):
    """Gated linear attention as a ``jax.lax.scan`` body: ``S' = diag(a) S + k vᵀ``, ``Sᵀ q``."""
    q, k, v, a = x
    S = a[:, None] * S + k[:, None] * v[None, :]
    return S, S.T @ q


def _gla_inputs(T, d=3):
    rng = np.random.default_rng(8)
    return tuple(jnp.asarray(rng.standard_normal((T, d))) for _ in range(3)) + \
        (jnp.asarray(rng.uniform(0.5, 0.95, (T, d))),)


LAX_CASES = [("chunked", _gla), ("sequential", _gla), ("auto", _gla)]


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("method, body", LAX_CASES)
def test_lax_methods_agree_with_jax_lax_scan(method, body):
    xs, S0 = _gla_inputs(24), jnp.zeros((3, 3))
    (carry, ys), info = recur.lax.scan(body, S0, xs, method=method, return_info=True)
    want_carry, want_ys = jax.lax.scan(body, S0, xs)
    _close(carry, want_carry, AGREE)
    _close(ys, want_ys, AGREE)
    if method == "chunked":
        assert info.method == "chunked"
        loss = lambda xs, m: jnp.sum(jnp.sin(recur.lax.scan(body, S0, xs, method=m)[1]))  # noqa: E731
        _close(jax.grad(loss)(xs, method), jax.grad(
            lambda xs: jnp.sum(jnp.sin(jax.lax.scan(body, S0, xs)[1])))(xs), AGREE)
