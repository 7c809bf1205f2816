"""The analysis passes over a catalog of step functions: kind, Jacobian, soundness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import recur
from recur.passes._dependency import jacobian_sparsity
from recur.passes._structure import analyse_structure
from recur.passes._trace import trace_step
from recur.passes._verify import verify

RNG = np.random.default_rng(0)
W4 = jnp.asarray(RNG.standard_normal((4, 4)) * 0.4)
WH = jnp.asarray(RNG.standard_normal((4, 3, 3)) * 0.4)  # 4 heads of 3
PERM = np.array([3, 0, 5, 1, 4, 2])


@jax.custom_jvp
def straight_through_round(h):
    return jnp.round(h)


straight_through_round.defjvp(lambda p, t: (straight_through_round(p[0]), t[0]))


def multihead(h, x):
    hh = h.reshape(4, 3)
    return jnp.tanh(jnp.einsum("hij,hj->hi", WH, hh) + x.reshape(4, 3)).reshape(12)


def pair_lstm(h, x):
    # per-unit (diagonal) LSTM: (h_i, c_i) interact only with each other
    hh, c = h[0::2], h[1::2]
    g = jax.nn.sigmoid(0.5 * hh + x[: hh.shape[0]])
    c_new = g * c + (1 - g) * jnp.tanh(hh)
    h_new = jnp.tanh(c_new) * g
    return jnp.stack([h_new, c_new], axis=1).reshape(-1)


def permuted_blocks(h, x):
    z = h[PERM].reshape(3, 2)
    out = jnp.tanh(z @ jnp.array([[0.5, 0.2], [0.1, 0.3]]))
    return out.reshape(6)[np.argsort(PERM)] + x


# name: (fn, state size, expected kind, expected jacobian)
CATALOG = {
    "zero": (lambda h, x: jnp.sin(x), 4, "affine", "zero"),
    "identity": (lambda h, x: h + x, 4, "affine", "identity"),
    "scalar linear": (lambda h, x: 0.5 * h, 4, "linear", "scalar"),
    "scalar input gate": (lambda h, x: x[0] * h + x, 4, "affine", "scalar"),
    "diagonal affine": (lambda h, x: x * h + 1.0, 4, "affine", "diagonal"),
    "dense linear": (lambda h, x: W4 @ h, 4, "linear", "dense"),
    "dense affine": (lambda h, x: W4 @ h + x, 4, "affine", "dense"),
    "where on input": (lambda h, x: jnp.where(x > 0, h, 2 * h), 4, "linear", "diagonal"),
    "cumsum": (lambda h, x: jnp.cumsum(h) * 0.1 + x, 4, "affine", "dense"),
    "roll": (lambda h, x: 0.5 * jnp.roll(h, 1) + x, 4, "affine", "dense"),
    "tanh rnn": (lambda h, x: jnp.tanh(0.9 * h + x), 4, "diagonal", "diagonal"),
    "dense tanh": (lambda h, x: jnp.tanh(W4 @ h + x), 4, "nonlinear", "dense"),
    "logistic": (lambda h, x: 3.9 * h * (1 - h), 1, "diagonal", "scalar"),
    "running max": (lambda h, x: jnp.maximum(h, x), 4, "diagonal", "diagonal"),
    "stop_gradient": (lambda h, x: h + jax.lax.stop_gradient(h ** 2), 4, "diagonal", "diagonal"),
    "straight-through": (lambda h, x: straight_through_round(h) + x, 4, "diagonal", "diagonal"),
    "where on state": (lambda h, x: jnp.where(h > 0, h, 0.5 * h), 4, "diagonal", "diagonal"),
    "multi-head": (multihead, 12, "block-diagonal", "block(3)"),
    "per-unit lstm": (pair_lstm, 8, "block-diagonal", "block(2)"),
    "permuted blocks": (permuted_blocks, 6, "block-diagonal", "block(2)"),
    "cond on input": (lambda h, x: jax.lax.cond(x[0] > 0, lambda h: 2 * h, lambda h: h + 1, h),
                      4, "affine", "scalar"),
    "fori linear": (lambda h, x: jax.lax.fori_loop(0, 2, lambda i, c: W4 @ c, h) + x, 4,
                    "affine", "dense"),
    "while on state": (lambda h, x: jax.lax.while_loop(lambda c: jnp.sum(c) > 10.0,
                                                       lambda c: c * 0.5, h), 4, "nonlinear",
                       "dense"),
}


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_catalog(name):
    fn, n, kind, jac = CATALOG[name]
    # a long sequence: the cost model sends it to the parallel methods on a GPU
    xs = jax.ShapeDtypeStruct((4096, n), jnp.float64)
    plan = recur.plan(fn, jax.ShapeDtypeStruct((n,), jnp.float64), xs, backend="gpu")
    (stage,) = plan.stages
    assert (stage.kind, stage.jacobian) == (kind, jac), plan.explain()
    assert plan.kind == kind
    if kind in ("linear", "affine"):
        assert plan.method == "scan"
    else:  # nonlinear stages get a DEER-family solver on GPU (or, linear over a semiring,
        # the exact semiring scan), the loop on CPU
        assert plan.method == ("semiring" if name == "running max" else plan.method)
        assert plan.method in ("deer", "quasi-deer", "semiring")
        cpu = recur.plan(fn, jax.ShapeDtypeStruct((n,), jnp.float64), xs, backend="cpu")
        assert cpu.method == "sequential"
        assert "predicted" in cpu.stages[0].why and "predicted" in dict(cpu.stages[0].rejected)[
            plan.method]


def test_cost_model_keeps_short_nonlinear_sequences_on_the_loop_even_on_gpu():
    def rnn(h, x):
        return jnp.tanh(0.5 * h + x)
    h0 = jax.ShapeDtypeStruct((8,), jnp.float32)
    short = recur.plan(rnn, h0, jax.ShapeDtypeStruct((8, 8), jnp.float32), backend="gpu")
    long = recur.plan(rnn, h0, jax.ShapeDtypeStruct((100_000, 8), jnp.float32), backend="gpu")
    assert short.method == "sequential" and long.method == "deer"
    text = long.explain_passes()
    assert "== cost ==" in text and "assumed" in text      # GPU constants are not measured
    assert "predicted time" in dict(long.stages[0].estimates)


def test_nonlinear_reason_names_the_term():
    plan = recur.plan(lambda h, x: h + jax.lax.stop_gradient(h ** 2), jnp.ones(3), None,
                      length=4)
    assert "integer_pow" in plan.stages[0].evidence
    with pytest.raises(recur.PlanError, match=r"h is nonlinear in the state"):
        recur.plan(lambda h, x: jnp.tanh(h), jnp.ones(3), None, length=4, method="scan")


@pytest.mark.parametrize("name", ["stop_gradient", "straight-through"])
def test_hidden_dependence_still_gives_the_loop_answer(name):
    fn, n, _, _ = CATALOG[name]
    xs = jnp.asarray(RNG.standard_normal((10, n)) * 0.3)
    h0 = jnp.full((n,), 0.1)
    hs = recur.scan(fn, h0, xs)
    ref = jax.lax.scan(lambda h, x: (fn(h, x),) * 2, h0, xs)[1]
    np.testing.assert_allclose(hs, ref, rtol=1e-12)


def test_pytree_reads_and_graph():
    def step(h, x):
        return {"m": h["m"] * 0.5 + h["P"][0], "P": h["P"] * 0.9 + x}
    h0 = {"m": jnp.zeros(2), "P": jnp.ones(3)}
    plan = recur.plan(step, h0, jnp.ones((5, 3)))
    reads = dict(plan.stages[0].reads)
    assert reads["['m']"] == ("['P']", "['m']") or set(reads["['m']"]) == {"['P']", "['m']"}
    assert reads["['P']"] == ("['P']",)
    g = plan.graph()
    assert g.has_edge("['P']", "['m']") and not g.has_edge("['m']", "['P']")
    assert plan.to_dict()["stages"][0]["kind"] == "affine"
    assert recur.plan(step, h0, jnp.ones((5, 3)), backend="cpu").method == "sequential"


def _random_step(draw_ops, n):
    """A random composition of elementwise, mixing and data-movement operations."""
    ops = {
        "tanh": lambda h: jnp.tanh(h),
        "roll": lambda h: jnp.roll(h, 1),
        "flip": lambda h: h[::-1],
        "mix01": lambda h: h.at[0].add(h[1]),
        "sum": lambda h: h + jnp.sum(h[: n // 2]),
        "sq": lambda h: h * h,
        "cumsum": lambda h: jnp.cumsum(h),
        "sort": lambda h: jnp.sort(h),
        "pairs": lambda h: (h.reshape(-1, 2) @ jnp.array([[1.0, 0.5], [0.0, 1.0]])).reshape(-1),
        "gather": lambda h: h[jnp.array([(i * 3) % n for i in range(n)])],
        "max": lambda h: jnp.maximum(h, h[::-1]),
        "scatter": lambda h: h.at[np.array([(i * 5) % n for i in range(n)])].set(jnp.tanh(h)),
        "scatter_dup": lambda h: h.at[np.array([0, 0, 1])].add(h[1:4] * h[:3]),
        "where_known": lambda h: jnp.where(jnp.arange(n) % 2 == 0, h, h[::-1] ** 2),
    }

    def step(h, x):
        for op in draw_ops:
            h = ops[op](h) * 0.7 + 0.1 * x
        return h
    return step, list(ops)


@given(st.lists(st.sampled_from(["tanh", "roll", "flip", "mix01", "sum", "sq", "cumsum",
                                 "sort", "pairs", "gather", "max", "scatter", "scatter_dup",
                                 "where_known"]), min_size=1, max_size=4),
       st.integers(0, 1000))
def test_sparsity_is_sound(ops, seed):
    """Every nonzero of the true Jacobian at random points lies inside the pattern, and
    the verification pass accepts the structure derived from it."""
    n = 6
    step, _ = _random_step(ops, n)
    ir = trace_step(step, jnp.ones(n), jnp.ones((3, n)))
    pattern = jacobian_sparsity(ir).pattern.toarray()
    rng = np.random.default_rng(seed)
    for _ in range(2):
        h, x = jnp.asarray(rng.standard_normal(n)), jnp.asarray(rng.standard_normal(n))
        J = np.asarray(jax.jacfwd(lambda h: step(h, x))(h))
        assert not np.any((J != 0) & ~pattern), (ops, J, pattern)
    structure = analyse_structure(pattern)
    assert verify(ir, structure, affine=False).structure_ok is not False


def test_verification_catches_a_planted_wrong_structure():
    ir = trace_step(lambda h, x: jnp.tanh(W4 @ h), jnp.ones(4), None, length=3)
    wrong_diagonal = analyse_structure(np.eye(4, dtype=bool))
    assert verify(ir, wrong_diagonal, affine=False).structure_ok is False
    wrong_blocks = analyse_structure(np.kron(np.eye(2), np.ones((2, 2))).astype(bool))
    assert verify(ir, wrong_blocks, affine=False).structure_ok is False
    # and a planted affinity claim on a nonlinear step fails the value probe
    assert verify(ir, analyse_structure(np.ones((4, 4), bool)), affine=True).affine_ok is False


def test_plan_with_shape_dtype_structs_and_backend():
    h0 = {"a": jax.ShapeDtypeStruct((3,), jnp.float32)}
    xs = jax.ShapeDtypeStruct((100, 3), jnp.float32)
    plan = recur.plan(lambda h, x: {"a": h["a"] * x}, h0, xs, backend="gpu")
    assert plan.backend == "gpu" and plan.length == 100
    assert plan.stages[0].states == ("['a']",)
    assert "gpu" in plan.explain()


def test_size_one_axes_broadcast_keep_the_pattern_sparse():
    # jax emits `add f32[3,2] f32[3,1]` for these: rows stay independent, block(2)
    for fn in (lambda x, _: x + jnp.sum(x, -1, keepdims=True), lambda x, _: x * x[:, :1]):
        plan = recur.plan(fn, jnp.ones((3, 2)), None, length=5)
        assert plan.stages[0].jacobian == "block(2)"
        h0 = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 2)))
        dense = jax.jacfwd(lambda z: fn(z.reshape(3, 2), None).reshape(-1))(h0.reshape(-1))
        blocks = np.kron(np.eye(3), np.ones((2, 2))).astype(bool)
        assert not np.any(np.asarray(dense)[~blocks])    # the pattern is sound
