"""method="semiring": recurrences linear over a semiring, detected and run as exact scans.

Every algebra against the sequential loop (values, reverse, vmap, grad, jvp; float32 and
float64), the five rows of the issue's table detected, look-alikes refused, the value
probe, forward-backward posteriors as the gradient of log p(x), max/+ subgradients with
ties, Viterbi back-pointers as a map, and the fallback.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import recur
from recur._semiring_algebra import ALGEBRAS
from recur._semiring_analysis import Claim
from recur.passes._semiring import analyse_semiring, verify_semiring
from recur.passes._structure import analyse_structure

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
TOL = {np.float64: 1e-9, np.float32: 2e-4}


def loop(f, h0, xs, p, reverse=False):
    def body(h, x):
        h = f(h, x, p)
        return h, h
    return jax.lax.scan(body, h0, xs, reverse=reverse)[1]


# --------------------------------------------------------------------------- the steps

def lse_step(a, lb, logA):          # HMM forward, log space
    return jax.nn.logsumexp(a[:, None] + logA, axis=0) + lb


def maxplus_step(d, lb, logA):      # Viterbi scores
    return jnp.max(d[:, None] + logA, axis=0) + lb


def minplus_step(d, w, W):          # shortest paths through a layered graph
    return jnp.min(d[:, None] + W + w[None, :], axis=0)


def runmax_step(m, x, _):           # running maximum
    return jnp.maximum(m, x)


def envelope_step(m, x, decay):     # decaying envelope, max/×
    return jnp.maximum(decay * m, x)


def minenv_step(m, x, decay):       # min/×
    return jnp.minimum(decay * m, x)


def prob_step(a, lb, A):            # HMM forward, probability space, normalised
    u = (A.T @ a) * jnp.exp(lb)
    return u / jnp.sum(u)


def lognorm_step(a, lb, logA):      # HMM forward, log space, normalised
    u = jax.nn.logsumexp(a[:, None] + logA, axis=0) + lb
    return u - jax.nn.logsumexp(u)


def heads_step(a, lb, logA):        # several independent chains (heads)
    return jax.nn.logsumexp(a[:, :, None] + logA, axis=1) + lb


ALGEBRA = {lse_step: "logsumexp", maxplus_step: "max-plus", minplus_step: "min-plus",
           runmax_step: "max-plus", envelope_step: "max-times", minenv_step: "min-times",
           prob_step: "plus-times", lognorm_step: "logsumexp", heads_step: "logsumexp"}


def problem(step, K, T, dtype, seed):
    rng = np.random.default_rng(seed)
    logA = np.log(rng.dirichlet(np.ones(K), size=K))
    xs = rng.normal(size=(T, K))
    h0 = np.full(K, -np.log(K))
    p = logA
    if step is minplus_step:
        p = rng.uniform(0, 2, size=(K, K))
        h0 = rng.uniform(0, 1, size=K)
    elif step in (runmax_step, envelope_step, minenv_step):
        p = np.asarray(0.8) if step is not runmax_step else np.asarray(0.0)
        h0 = rng.normal(size=K)
    elif step is prob_step:
        p, h0 = np.exp(logA), np.full(K, 1.0 / K)
    elif step is heads_step:
        H = 2
        p = np.log(rng.dirichlet(np.ones(K), size=(H, K)))
        xs = rng.normal(size=(T, H, K))
        h0 = np.full((H, K), -np.log(K))
    cast = lambda v: jnp.asarray(v, dtype)  # noqa: E731
    return cast(h0), cast(xs), cast(p)


def assert_close(a, b, tol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    scale = 1.0 + np.max(np.abs(np.where(np.isfinite(b), b, 0)), initial=0.0)
    err = np.max(np.abs(np.where(same, 0.0, a - b)), initial=0.0)
    assert err <= tol * scale, (err, scale)


# --------------------------------------------------------------------------- detection

@pytest.mark.parametrize("step", list(ALGEBRA), ids=lambda f: f.__name__)
def test_every_algebra_is_detected_and_probed(step):
    h0, xs, p = problem(step, 3, 8, jnp.float64, 0)
    plan = recur.plan(step, h0, xs, p, method="semiring")
    (stage,) = plan.stages
    assert stage.method == "semiring"
    name = ALGEBRAS[ALGEBRA[step]].name
    assert name.split(" ")[0] in stage.why and "confirmed by value probes" in stage.evidence
    assert "stage 0: " in plan.explain_passes().split("== semiring ==")[1]
    # auto considers it (on CPU the loop usually wins) and says so
    auto = recur.plan(step, h0, xs, p)
    names = [m for m, _ in auto.stages[0].rejected] + [auto.stages[0].method]
    assert "semiring" in names


def test_five_rows_of_the_table():
    """HMM forward (log-sum-exp), Viterbi with back-pointers (max/+), shortest paths
    (min/+), running extrema (max, max/×), normalised probability-space forward (+/×)."""
    rows = {lse_step: "logsumexp", maxplus_step: "max-plus", minplus_step: "min-plus",
            runmax_step: "max-plus", envelope_step: "max-times", prob_step: "plus-times"}
    for step, key in rows.items():
        h0, xs, p = problem(step, 4, 16, jnp.float32, 1)
        hs, info = recur.scan(step, h0, xs, p, method="semiring", return_info=True)
        assert info.method == "semiring" and not bool(info.fell_back), step.__name__
        assert_close(hs, loop(step, h0, xs, p), 2e-5)


@pytest.mark.parametrize("path, key", [("hmm_forward.rec", "logsumexp"),
                                       ("viterbi.rec", "max-plus"),
                                       ("running_max.rec", "max-plus")])
def test_dsl_examples_are_detected(path, key):
    rec = recur.load(EXAMPLES / path)
    plan = rec.plan(length=12, method="semiring")
    assert [st.method for st in plan.stages] == ["semiring"]
    assert ALGEBRAS[key].name in plan.stages[0].why


def claim_of(step, h0, xs, p):
    plan = recur.plan(step, h0, xs, p)
    return plan, plan.explain_passes().split("== semiring ==")[1].split("==")[0]


def test_look_alikes_are_refused_and_keep_their_plan():
    K, T = 3, 10
    rng = np.random.default_rng(0)
    logA = jnp.asarray(np.log(rng.dirichlet(np.ones(K), size=K)))
    xs = jnp.asarray(rng.normal(size=(T, K)))
    h0 = jnp.zeros(K)

    def reads_state(a, lb, P):          # coefficients that read the state
        return jax.nn.logsumexp(a[:, None] + P * a[None, :], axis=0) + lb

    def of_tanh(a, lb, P):              # logsumexp of a non-affine function of the state
        return jax.nn.logsumexp(jnp.tanh(a)[:, None] + P, axis=0) + lb

    def shift_not_added_back(a, lb, P):
        e = a[:, None] + P
        m = jnp.max(e, axis=0)
        return jnp.log(jnp.sum(jnp.exp(e - m), axis=0)) + jnp.tanh(m)

    def scaled(a, lb, P):               # 2 ⊗ ... is a power, not linear
        return jax.nn.logsumexp(2.0 * a[:, None] + P, axis=0) + lb

    def mixed(a, lb, P):                # max of a log-sum-exp: two algebras
        return jnp.maximum(jax.nn.logsumexp(a[:, None] + P, axis=0), jnp.max(a) + lb)

    for step, words in [(reads_state, "product"), (of_tanh, "tanh"),
                        (shift_not_added_back, "log-sum-exp"), (scaled, "product"),
                        (mixed, "")]:
        plan, text = claim_of(step, h0, xs, logA)
        assert "not linear over" in text or "no ⊕" in text, (step.__name__, text)
        assert words in text, (step.__name__, text)
        assert plan.stages[0].method != "semiring"
        with pytest.raises(recur.PlanError, match="semiring"):
            recur.plan(step, h0, xs, logA, method="semiring")
    # max/× over several state elements would need a nonnegative state
    dense_times = lambda m, x, P: jnp.maximum(jnp.max(P * m[None, :], axis=1), x)  # noqa
    _, text = claim_of(dense_times, h0, xs, jnp.abs(logA))
    assert "nonnegative" in text or "not linear" in text


def test_probe_refutes_a_wrong_claim():
    h0, xs, p = problem(lse_step, 3, 6, jnp.float64, 0)
    ir = recur.passes._trace.trace_step(lse_step, h0, xs, p, length=None, reverse=False)
    elements = np.arange(3)
    structure = analyse_structure(np.ones((3, 3), bool))
    assert analyse_semiring(ir, elements, structure).claim.algebra == "logsumexp"
    ok, _ = verify_semiring(ir, elements, structure, Claim("logsumexp"))
    assert ok is True
    bad, notes = verify_semiring(ir, elements, structure, Claim("max-plus"))
    assert bad is False and "failed a value probe" in notes[0]


# --------------------------------------------------------------------------- against the loop

cases = st.fixed_dictionaries({
    "step": st.sampled_from(list(ALGEBRA)),
    "K": st.sampled_from([1, 2, 4]),
    "T": st.sampled_from([1, 5, 33]),
    "dtype": st.sampled_from([np.float64, np.float32]),
    "reverse": st.booleans(),
    "chunk": st.sampled_from([None, 4]),
    "seed": st.integers(0, 1000),
})


@settings(max_examples=8)  # each example compiles a program: bounded on a 2-core machine
@given(cases)
def test_against_the_loop(case):
    step, dtype, rev = case["step"], case["dtype"], case["reverse"]
    h0, xs, p = problem(step, case["K"], case["T"], dtype, case["seed"])
    hs, info = recur.scan(step, h0, xs, p, method="semiring", reverse=rev,
                          chunk=case["chunk"], return_info=True)
    assert hs.dtype == h0.dtype
    assert_close(hs, loop(step, h0, xs, p, rev), TOL[dtype])
    assert not bool(info.fell_back)


@settings(max_examples=6)
@given(cases)
def test_derivatives_are_the_loops(case):
    step, dtype, rev = case["step"], case["dtype"], case["reverse"]
    h0, xs, p = problem(step, case["K"], case["T"], dtype, case["seed"])
    w = jnp.asarray(np.random.default_rng(1).normal(size=h0.shape), dtype)

    def loss(run):
        return lambda h0, xs, p: jnp.sum(run(h0, xs, p)[-1 if not rev else 0] * w)

    ours = loss(lambda h0, xs, p: recur.scan(step, h0, xs, p, method="semiring", reverse=rev,
                                             chunk=case["chunk"]))
    ref = loss(lambda h0, xs, p: loop(step, h0, xs, p, rev))
    argnums = (0, 1, 2) if step is not runmax_step else (0, 1)
    for g, r in zip(jax.grad(ours, argnums)(h0, xs, p), jax.grad(ref, argnums)(h0, xs, p)):
        assert_close(g, r, 10 * TOL[dtype])
    t = tuple(jnp.asarray(np.random.default_rng(2).normal(size=np.shape(v)), dtype)
              for v in (h0, xs, p))
    assert_close(jax.jvp(ours, (h0, xs, p), t)[1], jax.jvp(ref, (h0, xs, p), t)[1],
                 10 * TOL[dtype])


@pytest.mark.parametrize("step", [lse_step, maxplus_step, runmax_step, prob_step],
                         ids=lambda f: f.__name__)
def test_vmap_and_jit(step):
    h0, xs, p = problem(step, 3, 20, jnp.float64, 3)
    batch = jnp.stack([xs, xs[::-1], 2 * xs])

    def ours(xs):
        return recur.scan(step, h0, xs, p, method="semiring")

    got = jax.jit(jax.vmap(ours))(batch)
    ref = jax.vmap(lambda xs: loop(step, h0, xs, p))(batch)
    assert_close(got, ref, 1e-9)


# --------------------------------------------------------------------------- HMMs

def forward_backward(log_pi_prior, logA, logB):
    """Independent posterior marginals p(z_t | x_{1:T}) (float64 numpy, scaled)."""
    A, B = np.exp(logA), np.exp(logB - logB.max(1, keepdims=True))
    T, K = B.shape
    alpha, beta = np.zeros((T, K)), np.ones((T, K))
    a = np.exp(log_pi_prior) @ A * B[0]
    alpha[0] = a / a.sum()
    for t in range(1, T):
        a = alpha[t - 1] @ A * B[t]
        alpha[t] = a / a.sum()
    for t in range(T - 2, -1, -1):
        b = A @ (B[t + 1] * beta[t + 1])
        beta[t] = b / b.sum()
    post = alpha * beta
    return post / post.sum(1, keepdims=True)


def test_grad_of_log_likelihood_is_the_posterior_marginals():
    K, T = 4, 50
    h0, logB, logA = problem(lse_step, K, T, jnp.float64, 7)

    def log_lik(logB):
        return jax.nn.logsumexp(recur.scan(lse_step, h0, logB, logA, method="semiring")[-1])

    post = jax.grad(log_lik)(logB)
    np.testing.assert_allclose(np.asarray(post),
                               forward_backward(np.asarray(h0), np.asarray(logA),
                                                np.asarray(logB)), atol=1e-10)
    np.testing.assert_allclose(np.asarray(post).sum(1), 1.0, atol=1e-12)


def test_maxplus_subgradient_with_ties_is_the_loops():
    """Integer-valued scores: every sum is exact, so ties in the loop are ties in the scan,
    and JAX's rule (ties share the gradient) gives the same subgradient."""
    K, T = 3, 12
    rng = np.random.default_rng(0)
    sparse = lambda shape: rng.integers(-1, 1, size=shape) * (rng.random(shape) < 0.3)  # noqa
    logA = jnp.asarray(sparse((K, K)), jnp.float64)
    logB = jnp.asarray(sparse((T, K)), jnp.float64)
    h0 = jnp.zeros(K)

    def best(run):
        return lambda logB, logA: jnp.max(run(logB, logA)[-1])

    ours = best(lambda b, a: recur.scan(maxplus_step, h0, b, a, method="semiring"))
    ref = best(lambda b, a: loop(maxplus_step, h0, b, a))
    assert float(ours(logB, logA)) == float(ref(logB, logA))
    g, r = jax.grad(ours, (0, 1))(logB, logA), jax.grad(ref, (0, 1))(logB, logA)
    ties = np.asarray(r[0])
    assert np.any((ties > 0) & (ties < 1)), "the example must have ties"
    for a, b in zip(g, r):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-12)


def test_viterbi_back_pointers_are_a_map_of_the_scores():
    K, T = 4, 40
    h0d, logB, logA = problem(maxplus_step, K, T, jnp.float32, 5)

    def step(s, lb, P):
        scores = s["delta"][:, None] + P
        return {"delta": jnp.max(scores, axis=0) + lb,
                "psi": jnp.argmax(scores, axis=0).astype(jnp.int32)}

    h0 = {"delta": h0d, "psi": jnp.zeros(K, jnp.int32)}
    plan = recur.plan(step, h0, logB, logA, method="semiring")
    assert [st.method for st in plan.stages] == ["semiring", "sequential"]
    assert "parallel map" in plan.stages[1].why
    hs, info = recur.scan(step, h0, logB, logA, method="semiring", return_info=True)
    ref = loop(step, h0, logB, logA)
    assert hs["psi"].dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(hs["psi"]), np.asarray(ref["psi"]))
    assert_close(hs["delta"], ref["delta"], 2e-5)
    assert not np.any(np.asarray(info.fell_back))


def test_log_likelihood_leaf_is_a_later_affine_stage():
    """(α, ll) with α normalised in log space and ll' = ll + log-normaliser: α runs as a
    semiring scan, ll as the ordinary scan given α."""
    K, T = 3, 30
    h0a, logB, logA = problem(lse_step, K, T, jnp.float64, 2)

    def step(s, lb, P):
        u = jax.nn.logsumexp(s["a"][:, None] + P, axis=0) + lb
        c = jax.nn.logsumexp(u)
        return {"a": u - c, "ll": s["ll"] + c}

    h0 = {"a": h0a, "ll": jnp.zeros(())}
    plan = recur.plan(step, h0, logB, logA, method="semiring")
    assert [st.method for st in plan.stages] == ["semiring", "scan"]
    hs = recur.scan(step, h0, logB, logA, method="semiring")
    ref = loop(step, h0, logB, logA)
    assert_close(hs["a"], ref["a"], 1e-10)
    assert_close(hs["ll"], ref["ll"], 1e-10)
    direct = jax.nn.logsumexp(loop(lse_step, h0a, logB, logA)[-1])
    assert abs(float(hs["ll"][-1]) - float(direct)) < 1e-9


# --------------------------------------------------------------------------- never wrong

def test_negative_coefficient_falls_back():
    """max(a m, x) with a < 0 is not max/×-linear: the runtime's coefficient check (and the
    step test) reject the scan and the loop's answer is returned."""
    h0, xs, _ = problem(envelope_step, 3, 20, jnp.float64, 0)
    hs, info = recur.scan(envelope_step, h0, xs, jnp.asarray(-0.5), method="semiring",
                          return_info=True)
    assert bool(info.fell_back)
    assert_close(hs, loop(envelope_step, h0, xs, jnp.asarray(-0.5)), 1e-12)


def test_no_nan_gradient_where_the_loops_is_finite():
    """-inf entries (impossible transitions, an impossible start) give finite gradients."""
    K, T = 3, 10
    logA = jnp.log(jnp.asarray([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]]))
    logB = jnp.asarray(np.random.default_rng(0).normal(size=(T, K)))
    h0 = jnp.asarray([0.0, -jnp.inf, -jnp.inf])

    def ll(run):
        return lambda b: jax.nn.logsumexp(run(b)[-1])

    ours = ll(lambda b: recur.scan(lse_step, h0, b, logA, method="semiring"))
    ref = ll(lambda b: loop(lse_step, h0, b, logA))
    g, r = jax.grad(ours)(logB), jax.grad(ref)(logB)
    assert np.all(np.isfinite(np.asarray(r)))
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-12)
