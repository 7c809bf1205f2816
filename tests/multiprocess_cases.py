"""Sequence parallelism across processes: every process of a 2 x 2 job (2 processes with 2
CPU devices each, gloo collectives) runs these cases on a mesh of the 4 global devices, as
a user of ``jax.distributed`` would; results are gathered to every process and compared
with the loop (and one device).  Run by ``tests/test_multiprocess.py`` through
``tests/_multiprocess.py``; it prints ``CASE <name> ok`` per case and ``ALL CASES PASSED``.

The inputs are global arrays (``jax.make_array_from_callback``): sharded along time when
``T`` divides evenly, replicated otherwise (JAX arrays cannot be split unevenly; recur pads
them).  Sizes are tiny: what is tested is the program across processes, not the solvers.
"""

from __future__ import annotations

import os
import sys
import time
import traceback

from ._multiprocess import initialize

PROCESS_ID, PROCESSES = initialize()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

jax.config.update("jax_enable_x64", True)

import recur  # noqa: E402

from .test_stages import kalman_step, reference_filter  # noqa: E402

assert jax.process_count() == PROCESSES and jax.device_count() == 4, jax.devices()
AUTO = jax.make_mesh((4,), ("t",), axis_types=(AxisType.Auto,))
EXPLICIT = jax.make_mesh((4,), ("t",))   # jax 0.10's default: Explicit axes
CASES = []


def case(fn):
    CASES.append(fn)
    return fn


def put(v, mesh=AUTO, spec=P()):
    """The numpy value ``v`` as a global array laid out as ``spec`` over ``mesh``."""
    v = np.asarray(v)
    return jax.make_array_from_callback(v.shape, NamedSharding(mesh, spec), lambda i: v[i])


def put_xs(v, mesh=AUTO):
    """Inputs along time: split over the mesh when the length allows, else replicated."""
    return put(v, mesh, P("t") if len(v) % 4 == 0 else P())


def gather(tree):
    """Every leaf's global value, on every process (numpy)."""
    return jax.tree.map(lambda v: v if isinstance(v, np.ndarray) else np.asarray(
        multihost_utils.process_allgather(v, tiled=True)), tree)


def close(got, want, tol):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def loop(fn, h0, xs, params=None, reverse=False, length=None):
    def body(h, x):
        h = fn(h, x) if params is None else fn(h, x, params)
        return h, h
    return jax.lax.scan(body, h0, xs, reverse=reverse, length=length)[1]


def gru(h, x, p):
    z = jax.nn.sigmoid(p["Wz"] @ h + p["Uz"] @ x)
    r = jax.nn.sigmoid(p["Wr"] @ h + p["Ur"] @ x)
    c = jnp.tanh(p["Wh"] @ (r * h) + p["Uh"] @ x)
    return (1 - z) * h + z * c


def gru_problem(T, D=2, seed=0):
    rng = np.random.default_rng(seed)
    p = {k: rng.standard_normal((D, D)) / np.sqrt(D) for k in ("Wz", "Uz", "Wr", "Ur", "Wh", "Uh")}
    return np.zeros(D), rng.standard_normal((T, D)), p


def check_info(info, iterations=None):
    info = gather(info)
    assert bool(np.all(info.converged)) and not bool(np.any(info.fell_back)), info
    if iterations is not None:
        assert abs(int(info.iterations) - iterations) <= 1, (int(info.iterations), iterations)
    return info


# ----------------------------------------------------------------------------- cases
# Few programs, each covering several features: compiling is what takes the time here.

@case
def deer_eager_then_gradient_and_jvp():
    h0, xs, p = gru_problem(12)
    g_h0, g_xs, g_p = put(h0), put_xs(xs), jax.tree.map(put, p)
    # eager, on global arrays sharded along time: recur finds the mesh in xs
    hs, info = recur.scan(gru, g_h0, g_xs, g_p, method="deer", return_info=True)
    assert hs.sharding.spec[0] == "t", hs.sharding
    close(gather(hs), loop(gru, h0, xs, p), 1e-10)
    check_info(info)

    def run(h0, xs, p):
        return recur.scan(gru, h0, xs, p, method="deer", mesh=AUTO, axis_name="t")

    def loss(run):
        return lambda h0, xs, p: jnp.sum(jnp.sin(run(h0, xs, p)))

    @jax.jit
    def derivatives(h0, xs, p, t_xs):
        grads = jax.grad(loss(run), argnums=(0, 1, 2))(h0, xs, p)
        return grads, jax.jvp(lambda xs: run(h0, xs, p), (xs,), (t_xs,))[1]
    t_xs = np.cos(xs)
    grads, tangent = derivatives(g_h0 + 0.1, g_xs, g_p, put_xs(t_xs))
    close(gather(grads), jax.grad(loss(lambda *a: loop(gru, *a)), argnums=(0, 1, 2))(
        h0 + 0.1, xs, p), 1e-9)
    close(gather(tangent), jax.jvp(lambda xs: loop(gru, h0 + 0.1, xs, p), (xs,), (t_xs,))[1],
          1e-9)


def logistic(h, x):
    return 3.9 * h * (1 - h)


def affine(h, x):
    return x[0] * h + x[1]


@case
def scan_quasi_deer_jacobi_sequential_fallback_padding_reverse():
    rng = np.random.default_rng(1)
    ab = rng.uniform(-0.9, 0.9, (12, 3)), rng.standard_normal((12, 3))
    h0, xs, p = gru_problem(10, seed=3)   # 10 = 4 * 3 - 2: two padded steps

    def scan(*args, **kw):
        return recur.scan(*args, mesh=AUTO, axis_name="t", return_info=True, **kw)

    @jax.jit
    def everything(ab, h0, xs, p, c):
        return {"scan": scan(affine, c, ab, method="scan", reverse=True),
                "quasi-deer": scan(gru, h0, xs, p, method="quasi-deer"),
                "jacobi": scan(gru, h0, xs, p, method="jacobi", reverse=True),
                "sequential": scan(gru, h0, xs, p, method="sequential"),
                "fallback": scan(logistic, c[:1] * 0.3, None, length=14, method="deer")}
    out = gather(everything(tuple(map(put_xs, ab)), put(h0), put_xs(xs), jax.tree.map(put, p),
                            put(np.ones(3))))
    close(out["scan"][0], loop(affine, np.ones(3), ab, reverse=True), 1e-12)
    close(out["quasi-deer"][0], loop(gru, h0, xs, p), 1e-10)
    close(out["jacobi"][0], loop(gru, h0, xs, p, reverse=True), 1e-10)
    np.testing.assert_array_equal(out["sequential"][0], loop(gru, h0, xs, p))
    for name in ("scan", "quasi-deer", "jacobi", "sequential"):
        check_info(out[name][1])
    # the chaotic map: deer stops, and the loop's trajectory is returned exactly
    np.testing.assert_array_equal(out["fallback"][0], loop(logistic, np.asarray([0.3]), None,
                                                           length=14))
    assert bool(out["fallback"][1].fell_back) and not bool(out["fallback"][1].converged)


@case
def staged_kalman_filter():
    ys = np.random.default_rng(4).standard_normal((10, 2))
    h0 = {"m": np.zeros(4), "P": np.eye(4)}
    hs, info = jax.jit(lambda h0, ys: recur.scan(
        kalman_step, h0, ys, method={"['P']": "sequential", "['m']": "scan"}, mesh=AUTO,
        axis_name="t", return_info=True))(jax.tree.map(put, h0), put_xs(ys))
    np.testing.assert_allclose(gather(hs)["m"], reference_filter(ys), rtol=1e-9, atol=1e-10)
    assert gather(info).converged.shape == (2,)
    check_info(info)


@case
def quasi_elk_and_a_window_across_device_boundaries():
    h0, xs, p = gru_problem(14, seed=6)   # 4 steps per device: windows of 3 cross them
    out = jax.jit(lambda *a: (
        recur.scan(gru, *a, method="quasi-elk", mesh=AUTO, axis_name="t", return_info=True),
        recur.scan(gru, *a, method="deer", window=3, mesh=AUTO, axis_name="t",
                   return_info=True)))(put(h0), put_xs(xs), jax.tree.map(put, p))
    (elk, elk_info), (win, win_info) = gather(out)
    close(elk, loop(gru, h0, xs, p), 1e-10)
    check_info(elk_info)
    close(win, loop(gru, h0, xs, p), 1e-10)
    check_info(win_info)


@case
def explicit_axis_mesh_padding_and_gradients():
    h0, xs, p = gru_problem(10, seed=7)

    def run(xs):
        return recur.scan(gru, h0, xs, p, method="deer", mesh=EXPLICIT, axis_name="t")

    def loss(run):
        return lambda xs: (jnp.sum(jnp.sin(run(xs))), run(xs))
    # outside a mesh context (the README's recipe): padding, forward and gradient
    (_, hs), grad = jax.jit(jax.value_and_grad(loss(run), has_aux=True))(put(xs, EXPLICIT))
    close(gather(hs), loop(gru, h0, xs, p), 1e-10)
    want = jax.grad(lambda xs: jnp.sum(jnp.sin(loop(gru, h0, xs, p))))
    close(gather(grad), want(xs), 1e-9)
    with jax.set_mesh(EXPLICIT):   # inside it: typed results, split along time
        xs12 = np.concatenate([xs, xs[:2]])
        hs = jax.jit(run)(put(xs12, EXPLICIT, P("t")))
        assert jax.typeof(hs).sharding.spec[0] == "t", jax.typeof(hs)
        close(gather(hs), loop(gru, h0, xs12, p), 1e-10)


@case
def two_dimensional_mesh_batch_over_data_time_over_t():
    mesh = jax.make_mesh((2, 2), ("data", "t"), axis_types=(AxisType.Auto,) * 2)
    h0, xs, p = gru_problem(8, seed=8)
    batch = np.stack([xs, -0.5 * xs])

    def run(xs):
        return recur.scan(gru, h0, xs, p, method="deer", mesh=mesh, axis_name="t")
    batched = jax.vmap(run, spmd_axis_name="data")
    hs, grad = jax.jit(lambda b: (batched(b), jax.grad(lambda b: jnp.sum(batched(b)))(b)))(
        put(batch, mesh, P("data", "t")))
    assert hs.sharding.spec[:2] == ("data", "t"), hs.sharding
    reference = jax.vmap(lambda xs: loop(gru, h0, xs, p))
    close(gather(hs), reference(batch), 1e-10)
    close(gather(grad), jax.grad(lambda b: jnp.sum(reference(b)))(batch), 1e-9)


@case
def lax_scan_outputs_explicit_mesh_padding_and_gradient():
    h0, xs, p = gru_problem(10, seed=9)
    readout = np.random.default_rng(9).standard_normal((3, 2))

    def f(h, x):
        h = gru(h, x, p)
        return h, {"y": readout @ h, "norm": jnp.sum(h * h)}

    def run(xs):
        return recur.lax.scan(f, h0, xs, method="deer", mesh=EXPLICIT, axis_name="t")

    def loss(run):
        return lambda xs: jnp.sum(jnp.sin(run(xs)[1]["y"])) + jnp.sum(run(xs)[0])
    (carry, ys) = jax.jit(run)(put(xs, EXPLICIT))
    want_carry, want_ys = jax.lax.scan(f, h0, xs)
    close(gather(carry), want_carry, 1e-10)
    close(gather(ys), want_ys, 1e-10)
    grad = jax.jit(jax.grad(loss(run)))(put(xs, EXPLICIT))
    close(gather(grad), jax.grad(loss(lambda xs: jax.lax.scan(f, h0, xs)))(xs), 1e-9)


def main() -> None:
    start = time.time()
    for fn in CASES:
        t0 = time.time()
        try:
            fn()
        except BaseException:  # noqa: BLE001 - report, and leave at once (see below)
            traceback.print_exc()
            print(f"CASE {fn.__name__} FAILED on process {PROCESS_ID}", flush=True)
            sys.stderr.flush()
            # not sys.exit: a clean exit waits for the other processes at shutdown
            os._exit(1)
        print(f"CASE {fn.__name__} ok ({time.time() - t0:.1f} s)", flush=True)
    print(f"ALL CASES PASSED on process {PROCESS_ID} ({time.time() - start:.1f} s)",
          flush=True)


if __name__ == "__main__":
    main()
