"""Hand-written baselines, outside recur: minimal DEER / quasi-DEER, and optional peers.

Minimal DEER (Lim et al. 2024, "Parallelizing non-linear sequential models over the
sequence length"), written the way the paper describes it and with nothing else:

* the trajectory ``h = (h_0, ..., h_{T-1})`` is the root of ``h_t = f(h_{t-1}, x_t)``,
  ``h_{-1} = h0``;
* one Newton iteration linearises ``f`` at ``shift(h)`` with dense Jacobians
  ``J_t = vmap(jacfwd(f))`` and solves the linear recurrence
  ``h_t = J_t h_{t-1} + (f(h̃_{t-1}) - J_t h̃_{t-1})`` with ``jax.lax.associative_scan``
  over ``(A_t, b_t)`` pairs (matrix products);
* fixed stopping rule, in a ``jax.lax.while_loop``: stop when
  ``max_t |h_t - f(h_{t-1}, x_t)| <= tol`` (or after ``max_iters`` solves);
* the initial guess is ``h̃_t = f(h0, x_t)`` (the same one recur uses, so that the
  iteration counts compare).

``iterations`` counts linear solves (as recur's ``info.iterations`` does); the residual of
every iterate is recorded in ``history`` (index 0: the initial guess).

``quasi`` = quasi-DEER (Gonzalez et al. 2024): the same with ``diag(J_t)`` (taken from the
dense ``jacfwd``, so the Jacobian costs the same as DEER's) and an elementwise scan.

``solver="loop"`` replaces the associative scan by a sequential ``lax.scan`` over the same
``(A_t, b_t)``: the kernel recur's ``deer`` uses on CPU, so that a comparison with it
isolates the framework overhead from the choice of scan kernel.

Peers (optional, imported lazily; ``peer_status()`` says what is available and why not):

* ``dynamax`` -- ``parallel_lgssm_filter`` (Särkkä & García-Fernández's parallel Kalman
  filter) for the ``kalman`` workload;
* ``pararnn-torch`` -- ParaRNN's Newton + scan on CPU torch for the ``gru`` workload
  (``ParaGRU(mix="head", n_heads=1)`` is exactly the reference GRU, dense recurrent
  weights).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax


def _shift(h, h0):
    return jnp.concatenate([h0[None], h[:-1]], axis=0)


def _solve_dense_assoc(A, b, h0):
    """``h_t = A_t h_{t-1} + b_t``, ``h_{-1} = h0``, by ``associative_scan``."""
    b = b.at[0].add(A[0] @ h0)

    def op(x, y):  # x earlier, y later: y ∘ x
        ax, bx = x
        ay, by = y
        return ay @ ax, jnp.einsum("...ij,...j->...i", ay, bx) + by

    return lax.associative_scan(op, (A, b))[1]


def _solve_diag_assoc(a, b, h0):
    b = b.at[0].add(a[0] * h0)

    def op(x, y):
        ax, bx = x
        ay, by = y
        return ay * ax, ay * bx + by

    return lax.associative_scan(op, (a, b))[1]


def _solve_loop(A, b, h0, diag):
    def step(h, ab):
        at, bt = ab
        h = (at * h if diag else at @ h) + bt
        return h, h

    return lax.scan(step, h0, (A, b))[1]


def minimal_deer(f: Callable, h0, xs, *, tol: float = 1e-5, max_iters: int = 50,
                 quasi: bool = False, solver: str = "assoc"):
    """``(hs, stats)``: ``stats = dict(iterations, residual, converged, history)``.

    ``f(h, x) -> h'`` on a flat ``(D,)`` state; ``xs`` an array with leading axis ``T``.
    """
    T = xs.shape[0]
    fv = jax.vmap(f)

    def with_aux(h, x):
        y = f(h, x)
        return y, y

    jac_and_f = jax.vmap(jax.jacfwd(with_aux, has_aux=True))  # (J_t, f(h_{t-1}, x_t))

    def linearise(h):
        J, fh = jac_and_f(_shift(h, h0), xs)
        if quasi:
            J = jnp.diagonal(J, axis1=-2, axis2=-1)
        return J, fh

    def solve(J, b):
        if solver == "loop":
            return _solve_loop(J, b, h0, quasi)
        return (_solve_diag_assoc if quasi else _solve_dense_assoc)(J, b, h0)

    guess = fv(jnp.broadcast_to(h0, (T,) + h0.shape), xs)
    J, fh = linearise(guess)
    res = jnp.max(jnp.abs(guess - fh))
    hist = jnp.full((max_iters + 1,), jnp.nan, res.dtype).at[0].set(res)

    def cond(s):
        return (s[4] > tol) & (s[0] < max_iters)

    def body(s):
        k, h, J, fh, _, hist = s
        P = _shift(h, h0)
        Jp = J * P if quasi else jnp.einsum("tij,tj->ti", J, P)
        h = solve(J, fh - Jp)
        J, fh = linearise(h)
        res = jnp.max(jnp.abs(h - fh))
        return k + 1, h, J, fh, res, hist.at[k + 1].set(res)

    k, h, _, _, res, hist = lax.while_loop(
        cond, body, (jnp.asarray(0, jnp.int32), guess, J, fh, res, hist))
    return h, dict(iterations=k, residual=res, converged=res <= tol, history=hist)


# ----------------------------------------------------------------------------- peers

PEERS = {
    "dynamax": ("dynamax", "parallel_lgssm_filter for `kalman`"),
    "pararnn-torch": ("pararnn", "ParaRNN Newton+scan (CPU torch) for `gru`"),
}


def peer_status(name: str) -> tuple[bool, str]:
    """``(available, reason or version)`` without raising."""
    module, _ = PEERS[name]
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False, (f"{name} is not installed (optional peer: `pip install {name}`; "
                       "never installed over the project's jax)")
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - report why the peer is skipped
        return False, f"{name} {version} is installed but `import {module}` failed: " \
                      f"{type(e).__name__}: {str(e)[:200]}"
    return True, f"{name} {version}"


def pararnn_gru(W, xs, *, tol: float, max_iters: int):
    """ParaRNN (``pararnn-torch``) on the reference GRU: ``(run, stats)``; ``run()`` returns
    the ``(T, D)`` trajectory as numpy, ``stats()`` the last call's iterations/residuals.

    ``ParaGRU(mix="head", n_heads=1)``: ``z = σ(h A_z + W_zx x)``, ``r = σ(h A_r + W_rx x)``,
    ``n = tanh((r h) A_n + W_nx x)``, ``h' = lerp(h, n, z)`` -- the reference GRU with
    ``A_z = W_0^T``, ``A_r = W_2^T``, ``A_n = W_4^T`` and ``W_x = [W_1; W_3; W_5]``."""
    import logging
    import warnings

    import numpy as np
    import torch
    from pararnn import NewtonConfig, ParaGRU, ParaRNN

    D = W[0].shape[0]
    torch.set_num_threads(max(1, __import__("os").cpu_count() or 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.getLogger("pararnn").level
        logging.getLogger("pararnn").setLevel(logging.ERROR)
        try:
            cell = ParaGRU(D, D, mix="head", n_heads=1, max_recurrent_norm=None)
        finally:
            logging.getLogger("pararnn").setLevel(level)
    with torch.no_grad():
        cell.W_x.weight.copy_(torch.tensor(np.concatenate([W[1], W[3], W[5]], 0)))
        cell.W_x.bias.zero_()
        cell.A_z.copy_(torch.tensor(W[0].T[None]))
        cell.A_r.copy_(torch.tensor(W[2].T[None]))
        cell.A_n.copy_(torch.tensor(W[4].T[None]))
    model = ParaRNN(cell, config=NewtonConfig(max_iters=max_iters, residual_atol=tol,
                                              residual_fail=None),
                    solver="newton")
    x = torch.tensor(np.asarray(xs, np.float32)[None])

    def run():
        with torch.no_grad():
            return model(x)[0].numpy()

    def stats():
        st = model.last_stats[0]
        hist = [float(v) for v in st.residual_history]
        return {"iterations": max(int(st.iters) - 1, 0), "residual": float(st.max_residual),
                "history": hist, "backend": st.scan_backend}

    return run, stats


__all__ = ["minimal_deer", "pararnn_gru", "peer_status", "PEERS"]
