"""Sequence parallelism on 4 simulated CPU devices: every result equals the single-device
one (and the loop).  Run by ``tests/test_sharding.py`` in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the device count is fixed when
JAX starts, so it cannot share a process with the other tests)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding, PartitionSpec

import recur

from ._steps import make_case
from .test_stages import kalman_step, reference_filter

if jax.device_count() < 4:
    raise RuntimeError("tests/sharded_cases.py needs 4 devices: run it through "
                       "tests/test_sharding.py (XLA_FLAGS=--xla_force_host_platform_device_count=4)")

MESH = jax.make_mesh((4,), ("t",), axis_types=(jax.sharding.AxisType.Auto,))


def loop(fn, h0, xs, params=None, reverse=False, length=None):
    def body(h, x):
        h = fn(h, x) if params is None else fn(h, x, params)
        return h, h
    return jax.lax.scan(body, h0, xs, reverse=reverse, length=length)[1]


def close(a, b, rtol, atol=0.0):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- affine

@settings(max_examples=6)  # each example compiles a sharded program
@given(structure=st.sampled_from(["zero", "scalar", "diagonal", "block", "dense"]),
       T=st.sampled_from([4, 7, 18, 64]), reverse=st.booleans(),
       dtype=st.sampled_from([np.float64, np.float32]), seed=st.integers(0, 2**16))
def test_affine_scan_across_devices_equals_the_loop(structure, T, reverse, dtype, seed):
    case = make_case(seed, structure, n=4, T=T, dtype=dtype)
    hs, info = recur.scan(case.fn, case.h0, case.xs, case.params, method="scan", mesh=MESH,
                          reverse=reverse, return_info=True)
    ref = loop(case.fn, case.h0, case.xs, case.params, reverse=reverse)
    tol = 1e-11 if dtype == np.float64 else 2e-4
    close(hs, ref, rtol=tol, atol=tol)
    assert bool(info.converged) and not bool(info.fell_back)


def test_output_is_sharded_along_time_and_plan_shows_the_layout():
    case = make_case(0, "diagonal", n=4, T=64)
    xs = jax.device_put(case.xs, NamedSharding(MESH, PartitionSpec("t")))
    plan = recur.plan(case.fn, case.h0, xs, case.params, method="scan")
    assert plan.layout is not None and plan.layout.devices == 4
    assert plan.layout.local_length == 16 and plan.layout.padding == 0
    text = plan.explain()
    assert "across devices" in text and "all_gather" in text and "ppermute" in text
    hs = recur.scan(case.fn, case.h0, xs, case.params, method="scan")   # found from xs
    assert hs.sharding.spec[0] == "t"
    assert plan.to_dict()["layout"]["devices"] == 4


def test_explicit_axis_mesh_and_jit_with_mesh_option():
    mesh = jax.make_mesh((4,), ("t",), axis_types=(jax.sharding.AxisType.Explicit,))
    case = make_case(1, "block", n=4, T=20)
    ref = loop(case.fn, case.h0, case.xs, case.params)
    out = recur.scan(case.fn, case.h0, case.xs, case.params, method="scan", mesh=mesh,
                     axis_name="t")
    close(out, ref, rtol=1e-11, atol=1e-12)
    jitted = jax.jit(lambda xs: recur.scan(case.fn, case.h0, xs, case.params, method="scan",
                                           mesh=MESH, axis_name="t"))
    close(jitted(case.xs), ref, rtol=1e-11, atol=1e-12)


# ----------------------------------------------------------------------------- nonlinear

def gru(h, x, p):
    z = jax.nn.sigmoid(p["Wz"] @ h + p["Uz"] @ x)
    r = jax.nn.sigmoid(p["Wr"] @ h + p["Ur"] @ x)
    c = jnp.tanh(p["Wh"] @ (r * h) + p["Uh"] @ x)
    return (1 - z) * h + z * c


def gru_problem(T=40, D=5, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    p = {k: jnp.asarray(rng.standard_normal((D, D)) / np.sqrt(D), dtype)
         for k in ("Wz", "Uz", "Wr", "Ur", "Wh", "Uh")}
    return jnp.zeros(D, dtype), jnp.asarray(rng.standard_normal((T, D)), dtype), p


@pytest.mark.parametrize("method, reverse", [("deer", False), ("deer", True),
                                             ("quasi-deer", False), ("jacobi", True),
                                             ("sequential", True)])
def test_gru_across_devices_equals_one_device(method, reverse):
    h0, xs, p = gru_problem(T=42)   # 42 = 4 * 11 - 2: two padded steps
    one, info1 = recur.scan(gru, h0, xs, p, method=method, reverse=reverse, return_info=True)
    many, info4 = recur.scan(gru, h0, xs, p, method=method, reverse=reverse, mesh=MESH,
                             return_info=True)
    close(many, one, rtol=1e-10, atol=1e-11)
    close(many, loop(gru, h0, xs, p, reverse=reverse), rtol=1e-10, atol=1e-11)
    assert bool(info4.converged) and not bool(info4.fell_back)
    if method != "sequential":
        assert abs(int(info4.iterations) - int(info1.iterations)) <= 1
        assert float(info4.residual) <= 1e-10


def test_gru_float32_deer_across_devices():
    h0, xs, p = gru_problem(T=64, D=8, dtype=np.float32)
    many, info = recur.scan(gru, h0, xs, p, method="deer", mesh=MESH, return_info=True)
    assert bool(info.converged) and int(info.iterations) <= 6
    close(many, loop(gru, h0, xs, p), rtol=1e-4, atol=1e-5)


def test_gradients_across_devices_equal_the_loop():
    h0, xs, p = gru_problem(T=24, D=3)

    def loss(run, h0, xs, p):
        return jnp.sum(jnp.sin(run(h0, xs, p)))

    seq = jax.grad(lambda *a: loss(lambda h0, xs, p: loop(gru, h0, xs, p), *a),
                   argnums=(0, 1, 2))(h0 + 0.1, xs, p)
    for method in ("deer", "quasi-deer"):
        par = jax.grad(lambda *a: loss(lambda h0, xs, p: recur.scan(
            gru, h0, xs, p, method=method, mesh=MESH), *a), argnums=(0, 1, 2))(h0 + 0.1, xs, p)
        close(par, seq, rtol=1e-8, atol=1e-10)
    # forward mode
    t_xs = jnp.ones_like(xs)
    _, jv_par = jax.jvp(lambda xs: recur.scan(gru, h0, xs, p, method="deer", mesh=MESH),
                        (xs,), (t_xs,))
    _, jv_seq = jax.jvp(lambda xs: loop(gru, h0, xs, p), (xs,), (t_xs,))
    close(jv_par, jv_seq, rtol=1e-8, atol=1e-10)


def test_vmap_across_devices():
    h0, xs, p = gru_problem(T=16, D=3)
    batch = jnp.stack([xs, 0.5 * xs, -xs])
    out = jax.vmap(lambda xs: recur.scan(gru, h0, xs, p, method="deer", mesh=MESH))(batch)
    ref = jax.vmap(lambda xs: loop(gru, h0, xs, p))(batch)
    close(out, ref, rtol=1e-10, atol=1e-11)


def test_chaotic_map_falls_back_across_devices():
    def logistic(h, x):
        return 3.9 * h * (1 - h)
    h0 = jnp.asarray([0.3])
    hs, info = recur.scan(logistic, h0, None, length=203, method="deer", mesh=MESH,
                          return_info=True)
    np.testing.assert_array_equal(np.asarray(hs), np.asarray(loop(logistic, h0, None,
                                                                   length=203)))
    assert bool(info.fell_back) and not bool(info.converged)


@pytest.mark.parametrize("method, reverse", [("elk", False), ("quasi-elk", True)])
def test_elk_across_devices_equals_one_device(method, reverse):
    h0, xs, p = gru_problem(T=42)   # two padded steps
    one, info1 = recur.scan(gru, h0, xs, p, method=method, reverse=reverse, return_info=True)
    many, info4 = recur.scan(gru, h0, xs, p, method=method, reverse=reverse, mesh=MESH,
                             return_info=True)
    close(many, one, rtol=1e-10, atol=1e-11)
    close(many, loop(gru, h0, xs, p, reverse=reverse), rtol=1e-10, atol=1e-11)
    assert bool(info4.converged) and int(info4.iterations) == int(info1.iterations)
    text = recur.plan(gru, h0, xs, p, method=method, mesh=MESH).explain()
    assert "Kalman filter's local totals" in text


@pytest.mark.parametrize("window, reverse", [(4, False), (16, True)])
def test_windows_across_device_boundaries_equal_one_device(window, reverse):
    h0, xs, p = gru_problem(T=42)   # 11 steps per device: windows of 4 and 16 cross them
    kw = dict(method="deer", window=window, reverse=reverse, return_info=True)
    one, info1 = recur.scan(gru, h0, xs, p, **kw)
    many, info4 = recur.scan(gru, h0, xs, p, mesh=MESH, **kw)
    close(many, one, rtol=1e-12, atol=1e-13)   # the same sweeps
    assert int(info4.iterations) == int(info1.iterations) and bool(info4.converged)


def test_explicit_axis_mesh_padding_gradients_without_and_with_a_mesh_context():
    mesh = jax.make_mesh((4,), ("t",), axis_types=(jax.sharding.AxisType.Explicit,))
    h0, xs, p = gru_problem(T=10, D=3)   # padded

    def run(xs):
        return recur.scan(gru, h0, xs, p, method="deer", mesh=mesh, axis_name="t")

    def loss(run):
        return lambda xs: (jnp.sum(jnp.sin(run(xs))), run(xs))

    def derivatives(run):   # forward, gradient and a jvp
        return lambda xs: (jax.value_and_grad(loss(run), has_aux=True)(xs),
                           jax.jvp(run, (xs,), (jnp.cos(xs),))[1])
    got = jax.jit(derivatives(run))(xs)   # outside a mesh context: the README's recipe
    close(got, derivatives(lambda xs: loop(gru, h0, xs, p))(xs), rtol=1e-8, atol=1e-10)
    xs12 = jnp.concatenate([xs, xs[:2]])
    want = jax.grad(lambda xs: loss(lambda xs: loop(gru, h0, xs, p))(xs)[0])(xs12)
    with jax.set_mesh(mesh):   # inside one: typed results, split along time
        grad = jax.jit(jax.grad(lambda xs: loss(run)(xs)[0]))(
            jax.device_put(xs12, NamedSharding(mesh, PartitionSpec("t"))))
        assert jax.typeof(grad).sharding.spec[0] == "t"
    close(grad, want, rtol=1e-8, atol=1e-10)


def logistic(h, r):
    return r * h * (1 - h)


def test_two_dimensional_mesh_batch_over_data_and_time_over_t():
    mesh = jax.make_mesh((2, 2), ("data", "t"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    h0, xs, p = gru_problem(T=10, D=3)
    batch = jnp.stack([xs, 4 * xs])   # the rows need different numbers of iterations
    rs = jnp.stack([jnp.full((12, 1), 2.5), jnp.full((12, 1), 3.9)])   # contractive, chaotic
    plans = []

    def run(xs, method):
        plans.append(recur.plan(gru, h0, xs, p, method=method, mesh=mesh, axis_name="t"))
        return recur.scan(gru, h0, xs, p, method=method, mesh=mesh, axis_name="t",
                          return_info=True)

    def split(fn):
        return jax.vmap(fn, spmd_axis_name="data")

    @jax.jit
    def everything(batch, rs):
        return (split(lambda xs: run(xs, "quasi-deer"))(batch),
                jax.grad(lambda b: jnp.sum(split(lambda xs: run(xs, "deer")[0])(b)))(batch),
                split(lambda r: recur.scan(logistic, jnp.asarray([0.3]), r, method="deer",
                                           mesh=mesh, axis_name="t", return_info=True))(rs))
    (hs, info), grad, (chaos, chaos_info) = everything(
        jax.device_put(batch, NamedSharding(mesh, PartitionSpec("data", "t"))), rs)
    ref = jax.vmap(lambda xs: loop(gru, h0, xs, p))
    close(hs, ref(batch), rtol=1e-10, atol=1e-11)
    assert hs.sharding.spec[:2] == ("data", "t")
    assert bool(np.all(info.converged)) and len(set(np.asarray(info.iterations))) == 2
    close(grad, jax.grad(lambda b: jnp.sum(ref(b)))(batch), rtol=1e-8, atol=1e-10)
    # one row falls back to the loop, the other converges: the same number of loop trips
    # on every device (a collective_permute is a rendezvous of all of them)
    np.testing.assert_array_equal(np.asarray(chaos_info.fell_back), [False, True])
    close(chaos, jax.vmap(lambda r: loop(logistic, jnp.asarray([0.3]), r))(rs), rtol=1e-12)
    text = plans[0].explain()
    assert "axis 'data' (2 devices): the batch of sequences" in text and "axis 't'" in text
    assert plans[0].layout.batch_axes == ("data",)


# ----------------------------------------------------------------------------- stages

def test_staged_kalman_across_devices():
    ys = jnp.asarray(np.random.default_rng(0).standard_normal((50, 2)))
    h0 = {"m": jnp.zeros(4), "P": jnp.eye(4)}
    for method in ({"['m']": "scan"}, {"['P']": "deer", "['m']": "scan"}):
        hs, info = recur.scan(kalman_step, h0, ys, method=method, mesh=MESH, return_info=True)
        np.testing.assert_allclose(hs["m"], reference_filter(ys), rtol=1e-9, atol=1e-10)
        assert info.converged.shape == (2,) and bool(np.all(info.converged))
    plan = recur.plan(kalman_step, h0, ys, method={"['P']": "deer", "['m']": "scan"}, mesh=MESH)
    assert len(plan.layout.communication) == 2

    def loss(ys, run):
        return jnp.sum(jnp.sin(run(ys)["m"]))
    par = jax.grad(loss)(ys[:20], lambda ys: recur.scan(
        kalman_step, h0, ys, method={"['P']": "deer", "['m']": "scan"}, mesh=MESH))
    seq = jax.grad(loss)(ys[:20], lambda ys: loop(kalman_step, h0, ys))
    np.testing.assert_allclose(par, seq, rtol=1e-9, atol=1e-12)


def test_dsl_recurrence_across_devices():
    rec = recur.loads("""
recurrence rnn
dim D = 3
param W[D, D]
input x[D]
state h[D] = 0
h' = tanh(W @ h + x)
""")
    rng = np.random.default_rng(2)
    W = jnp.asarray(rng.standard_normal((3, 3)) / 3)
    xs = {"x": jnp.asarray(rng.standard_normal((30, 3)))}
    one = rec.scan(rec.init(), xs, {"W": W}, method="deer")
    many = rec.scan(rec.init(), xs, {"W": W}, method="deer", mesh=MESH)
    close(many, one, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- errors

def test_clear_errors_across_devices():
    h0, xs, p = gru_problem(T=12, D=3)
    with pytest.raises(recur.PlanError, match="not an axis of the mesh"):
        recur.scan(gru, h0, xs, p, method="deer", mesh=MESH, axis_name="time")
    with pytest.raises(recur.PlanError, match="cannot be split over 4 devices"):
        recur.scan(gru, h0, xs[:3], p, method="deer", mesh=MESH)
    with pytest.raises(recur.PlanError, match="needs a mesh"):
        recur.scan(gru, h0, xs, p, method="deer", axis_name="t")


# ----------------------------------------------------------------------------- semiring

def _lse_step(a, lb, P):
    return jax.nn.logsumexp(a[:, None] + P, axis=0) + lb


def _decaying_max(m, x, P):
    return jnp.maximum(m - 0.1, x)


def _normalised(a, lb, P):
    u = (jnp.exp(P).T @ a) * jnp.exp(lb)
    return u / jnp.sum(u)


@pytest.mark.parametrize("step", [_lse_step, _decaying_max, _normalised])
@pytest.mark.parametrize("reverse", [False, True])
def test_semiring_scan_across_devices(step, reverse):
    """Local maps, one all_gather of the four pieces' maps, each piece from its incoming
    state: equal to the loop (T = 37: padded), gradients by the tangent solve too."""
    K, T = 3, 37
    rng = np.random.default_rng(0)
    logA = jnp.asarray(np.log(rng.dirichlet(np.ones(K), size=K)))
    xs = jnp.asarray(rng.normal(size=(T, K)))
    h0 = jnp.full(K, 1.0 / K)
    hs, info = recur.scan(step, h0, xs, logA, method="semiring", mesh=MESH, reverse=reverse,
                          return_info=True)
    assert not bool(info.fell_back)
    close(hs, loop(step, h0, xs, logA, reverse), 1e-12, 1e-12)
    g = jax.grad(lambda xs: jnp.sum(recur.scan(step, h0, xs, logA, method="semiring",
                                               mesh=MESH, reverse=reverse)[-1]))(xs)
    r = jax.grad(lambda xs: jnp.sum(loop(step, h0, xs, logA, reverse=reverse)[-1]))(xs)
    close(g, r, 1e-10, 1e-12)
