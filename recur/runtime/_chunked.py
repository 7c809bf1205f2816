r"""The chunkwise-parallel form of a decayed linear-attention scan (method ``chunked``).

For a body in the chunkwise form of ``recur/_chunkform.py`` -- per state leaf, in its
canonical frame ``(b, K, V)``, ``S_t = g_t ⊙ S_{t-1} + Σ_r k_{t,r} v_{t,r}ᵀ`` and readouts
``r_t = S_τᵀ q_t`` (a readout ``C h`` by a matrix is ``M`` such queries at once) -- the
``T`` steps are cut into ``N = ⌈T/C⌉`` chunks of ``C`` steps.  Within chunk ``n`` (steps
``c_0 .. c_0+C-1``, ``S_n`` the state before it), with the *segment products* of the
decays

.. math::
   P_{ts} = \prod_{s < u \le t} g_u \quad (s \le t), \qquad P_{ts} = 0 \quad (s > t),

(per head, and per row ``K`` for a per-row decay; ``s = -1`` is the chunk start),

.. math::
   r_t &= \underbrace{\textstyle\sum_{s \le t} \big(\sum_K q_t P_{ts} k_s\big)\, v_s}_
         {\text{masked } C \times C \text{ products}}
        + \underbrace{(q_t \odot P_{t,-1})^\top S_n}_{\text{from the boundary state}}, \\
   S_{n+1} &= P_{C-1,-1} \odot S_n + \textstyle\sum_s (k_s \odot P_{C-1,s})\, v_s^\top .

The boundary states ``S_n`` are one ``lax.scan`` over the ``N`` chunks; everything else is
batched over the chunks -- all at once, or (``ChunkForm.group``, chosen by the cost model so
the masked products of a group stay within a cache- or memory-sized budget) a ``lax.scan``
over groups of chunks carrying the boundary state, which on a CPU is both faster (the
products stay in cache) and leaner (measured: ``passes/_cost.py``, ``CHUNK_GROUP_BYTES``).  Nothing is stored per step but the pieces ``g, k, v, q``
and the readouts: memory ``O(T (|y| + C b) + (T/C) |S|)`` (``O(T C b K)`` for a per-row
decay: its ``P`` has a ``K`` axis), never the ``T`` states.

Every decay enters as a segment product ``P_{ts}``, formed for each start ``s`` by a
cumulative product along ``t`` of ``g_u`` (``u > s``) -- the quantity ``exp(L_t - L_s)``
of the log-space formulation, never a ratio of prefix products ``exp(L_t) / exp(L_s)``: so
with ``|g| ≤ 1`` every factor has modulus at most one, nothing overflows, and a product
underflows only where the true one does.  Zero, negative and complex decays need no
special case, and derivatives are those of plain products (exact at a zero gate: a decay per
row is summed in log space with its zero gates counted apart, and differentiated by its own
rule, ``_row_segment_products``).  The
mask is applied with ``where``, so a non-finite input never leaks into earlier steps.

An output that reads the old state (``τ = t - 1``) is a readout of the new state at
``t - 1`` with ``q_t``: the queries are shifted by one step and the first output reads
``h0`` directly.  Derivatives are those of this program (JAX differentiates it; the scan
over chunks keeps one state per chunk for the reverse pass).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from .._chunk_pieces import LeafForm
from .._chunkform import ChunkForm


def _segment_products(g, C: int):
    """``g``: ``(N, C, b, d)`` -> ``P``: ``(N, C, C+1, b, d)`` with ``P[n, t, s+1]`` the
    product of ``g[n, u]`` over ``s < u ≤ t`` (1 for ``s = t``, 0 for ``s > t``).

    One decay per head (``d = 1``): cumulative products along ``t`` for every start ``s``
    (exact for any gate, zero, negative or complex, and cheap at ``C² b`` per chunk).  A
    decay per row (``d = K``): ``_row_segment_products``, in log space."""
    if g.shape[-1] == 1:
        inside, keep = _segment_masks(C)
        P = jnp.cumprod(jnp.where(inside, g[:, :, None], jnp.ones((), g.dtype)), axis=1)
        return jnp.where(keep, P, jnp.zeros((), g.dtype))
    return _row_segment_products(g, C)


def _segment_masks(C: int):
    """``(inside, keep)``: ``u`` is inside segment ``(s, t]``; ``P_ts`` is kept (``s ≤ t``)."""
    t = jnp.arange(C)[:, None]
    s = jnp.arange(-1, C)[None, :]
    return (t > s)[None, :, :, None, None], (t >= s)[None, :, :, None, None]


def _segment_sums(a, C: int):
    """``Σ_{s<u≤t} a_u`` for every segment: ``(N, C, b, d)`` -> ``(N, C, C+1, b, d)``."""
    inside, _ = _segment_masks(C)
    return jnp.cumsum(jnp.where(inside, a[:, :, None], jnp.zeros((), a.dtype)), axis=1)


def _row_logs(g, C: int):
    """``(E, Z, keep)``: ``E`` the product of the segment's nonzero gates (``exp`` of the
    segment's sum of logs, each segment summed from its own start: Mamba-2's ``segsum``,
    rounding relative to the segment), ``Z`` the number of its zero gates; ``P = [Z = 0] E``."""
    zero = g == 0
    E = jnp.exp(_segment_sums(jnp.log(jnp.where(zero, jnp.ones((), g.dtype), g)), C))
    Z = _segment_sums(zero.astype(jnp.int32), C)
    return E, Z, _segment_masks(C)[1]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _row_segment_products(g, C: int):
    """Per-row segment products ``exp(Σ_{s<u≤t} log g_u)``: a zero gate (a reset) gives
    ``log 0 = -inf`` and the right value 0, but autodiff of the logs would give ``0 · ∞``;
    so the derivative is its own rule (``_row_segment_products_jvp``), that of the product,
    exact at zero gates.  A negative real gate gives a non-finite result, which the run's
    check sends to the loop."""
    _, keep = _segment_masks(C)
    return jnp.exp(jnp.where(keep, _segment_sums(jnp.log(g), C),
                             jnp.asarray(-jnp.inf, jnp.log(g).dtype)))


@_row_segment_products.defjvp
def _row_segment_products_jvp(C, primals, tangents):
    r"""``∂P_ts/∂g_u`` for ``u`` in the segment: ``P_ts / g_u`` where no gate is zero,
    ``E_ts`` for the one zero gate where exactly one is (the product of the others), and 0
    where two or more are; so ``dP = [Z = 0] E Σ_u dg_u/g_u + [Z = 1] E Σ_{u: g_u = 0} dg_u``
    -- linear in ``dg``, so reverse mode transposes it."""
    (g,), (dg,) = primals, tangents
    E, Z, keep = _row_logs(g, C)
    zero = g == 0
    nothing = jnp.zeros((), dg.dtype)
    ratio = jnp.where(zero, nothing, dg / jnp.where(zero, jnp.ones((), g.dtype), g))
    at_zero = jnp.where(zero, dg, nothing)
    P = jnp.where(keep & (Z == 0), E, jnp.zeros((), E.dtype))
    dP = (jnp.where(keep & (Z == 0), E * _segment_sums(ratio, C), nothing)
          + jnp.where(keep & (Z == 1), E * _segment_sums(at_zero, C), nothing))
    return P, dP


def leaf_readouts(lf: LeafForm, g, k, v, Q, S0, C: int, group: int = 0):
    """One leaf through the chunkwise form: ``(S_T, r, boundary states)`` with
    ``r[t] = S_tᵀ Q[t]``.

    ``g``: ``(T, b, 1|K)`` or None (no decay); ``k``: ``(T, R, b, K)``; ``v``:
    ``(T, R, b, V)``; ``Q``: ``(T, m, b, K)`` (``m`` queries); ``S0``: ``(b, K, V)``;
    ``r``: ``(T, m, b, V)``.  ``group``: chunks evaluated together (0: all at once); fewer
    make a ``lax.scan`` over groups of that many chunks, so the masked products exist for
    one group at a time."""
    T = k.shape[0]
    N = -(-T // C)
    G = N if group <= 0 or group >= N else int(group)
    n_groups = -(-N // G)
    pad = n_groups * G * C - T
    if pad:
        k, v, Q = (jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)])
                   for a in (k, v, Q))
        if g is not None:
            g = jnp.concatenate([g, jnp.ones((pad,) + g.shape[1:], g.dtype)])
    S0 = jnp.asarray(S0, k.dtype)
    if n_groups == 1:
        final, r, starts = _chunks_readouts(g, k, v, Q, S0, C)
        return final, r[:T], starts[:N]

    def one_group(S, pieces):
        final, r, starts = _chunks_readouts(*pieces, S, C)
        return final, (r, starts)

    split = lambda a: None if a is None else a.reshape((n_groups, G * C) + a.shape[1:])  # noqa: E731
    final, (r, starts) = lax.scan(one_group, S0, tuple(split(a) for a in (g, k, v, Q)))
    r = r.reshape((n_groups * G * C,) + r.shape[2:])[:T]
    return final, r, starts.reshape((n_groups * G,) + starts.shape[2:])[:N]


def _chunks_readouts(g, k, v, Q, S0, C: int):
    """``leaf_readouts`` for ``T = N C`` steps, all ``N`` chunks at once."""
    T, R, b, K = k.shape
    V = v.shape[-1]
    m = Q.shape[1]
    N = T // C
    kc = k.reshape(N, C * R, b, K)
    vc = v.reshape(N, C * R, b, V)
    Qc = Q.reshape(N, C, m, b, K)
    t = jnp.arange(C)
    mask = (t[:, None] >= t[None, :])
    mask = jnp.repeat(mask, R, axis=1)[None, None, None]            # (1,1,1,C,C R)
    if g is None:
        A = jnp.einsum("ntmbk,nsbk->nmbts", Qc, kc)
        A = jnp.where(mask, A, jnp.zeros((), A.dtype))
        inter_q = Qc
        k_end = kc
        P_all = None
    else:
        d = g.shape[-1]
        P = _segment_products(g.reshape(N, C, b, d), C)               # (N, C, C+1, b, d)
        P_in = jnp.repeat(P[:, :, 1:], R, axis=2)                     # (N, C, C R, b, d)
        P_start = P[:, :, 0]                                         # (N, C, b, d)
        P_end = jnp.repeat(P[:, C - 1, 1:], R, axis=1)               # (N, C R, b, d)
        P_all = P[:, C - 1, 0]                                       # (N, b, d)
        if d == 1:
            A = jnp.einsum("ntmbk,nsbk->nmbts", Qc, kc)
            A = A * jnp.transpose(P_in[..., 0], (0, 3, 1, 2))[:, None]
        else:
            A = jnp.einsum("ntmbk,ntsbk->nmbts", Qc, P_in * kc[:, None])
        A = jnp.where(mask, A, jnp.zeros((), A.dtype))
        inter_q = Qc * P_start[:, :, None]
        k_end = kc * P_end
    r_intra = jnp.einsum("nmbts,nsbv->ntmbv", A, vc)
    U = jnp.einsum("nsbk,nsbv->nbkv", k_end, vc)

    def boundary(S, inp):
        u, a = inp
        nxt = (S if a is None else a[..., None] * S) + u
        return nxt, S

    if P_all is None:
        final, starts = lax.scan(lambda S, u: (S + u, S), S0, U)
    else:
        final, starts = lax.scan(boundary, S0, (U, P_all))
    r_inter = jnp.einsum("ntmbk,nbkv->ntmbv", inter_q, starts)
    return final, (r_intra + r_inter).reshape(N * C, m, b, V), starts


def pieces_all(form: ChunkForm, consts, xs, T: int):
    """Every step's pieces (``form.pieces`` batched over the ``T`` steps)."""
    if not xs:
        leaves, qs = form.pieces(consts, [])
        bc = lambda a: None if a is None else jnp.broadcast_to(a, (T,) + a.shape)  # noqa: E731
        return [tuple(bc(a) for a in p) for p in leaves], [bc(q) for q in qs]
    return jax.vmap(lambda x: form.pieces(consts, x))(list(xs))


def chunked_scan(form: ChunkForm, consts, h_leaves, xs, T: int, C: int):
    """``(final carry leaves, readouts, boundary states)`` of the scan in processing order:
    readouts in the axes of their body values, ``(T, ...)``; boundary states per leaf
    ``(N, b, K, V)`` (the state before each chunk)."""
    leaves, qs = pieces_all(form, consts, xs, T)
    finals, reads, boundaries = [], [None] * len(form.readouts), []
    for i, (lf, (g, k, v)) in enumerate(zip(form.leaves, leaves)):
        S0 = lf.canon(h_leaves[i]).astype(k.dtype)
        mine = [j for j, r in enumerate(form.readouts) if r.leaf == i]
        queries = []
        for j in mine:
            q = qs[j]                     # (T, M, b, K): the readout's M queries
            if not form.readouts[j].new:  # S_{t-1}ᵀ q_t = (S_τᵀ q_{τ+1}) at τ = t - 1
                q = jnp.concatenate([q[1:], jnp.zeros_like(q[:1])])
            queries.append(q)
        Q = jnp.concatenate(queries, 1) if queries else \
            jnp.zeros((T, 0, lf.b, lf.K), k.dtype)
        final, r, starts = leaf_readouts(lf, g, k, v, Q, S0, C, form.group)
        boundaries.append(starts)
        slot = 0
        for j in mine:
            M = form.readouts[j].M
            rj = r[:, slot:slot + M]
            slot += M
            if not form.readouts[j].new:
                first = jnp.einsum("bkv,mbk->mbv", S0, qs[j][0])[None]
                rj = jnp.concatenate([first, rj[:-1]])
            reads[j] = form.arrange(form.readouts[j], rj, lead=1)
        finals.append(lf.uncanon(final).astype(lf.dtype))
    return finals, reads, boundaries


def chunked_outputs(form: ChunkForm, consts, h_leaves, xs, T: int, C: int,
                    boundaries: bool = False):
    """``(final carry leaves, y leaves)`` in processing order (``xs``: list of leaves with a
    leading ``T``, or empty); with ``boundaries`` also the states before each chunk."""
    finals, reads, starts = chunked_scan(form, consts, h_leaves, xs, T, C)
    if xs:
        ys = jax.vmap(lambda r, x: form.phi(consts, r, x))(reads, list(xs))
    else:
        ys = jax.vmap(lambda r: form.phi(consts, r, []))(reads)
    return (finals, list(ys), starts) if boundaries else (finals, list(ys))


def run_chunked(form: ChunkForm, body, consts, h_leaves, xs, T: int, options, raiser=None):
    """``(final carry, ys, StageStats)``: the chunkwise form, checked, with the loop as the
    fallback (``on_failure``).

    The check
    ---------
    The form is exact algebra on pieces the pass extracted from the body and probed; what a
    run can still get wrong is the extraction at *these* inputs, and non-finite values
    (``0 · inf`` and ``inf - inf`` arise in a different order than in the loop).  So at the
    first step of every chunk -- where the chunkwise form knows the state before the step
    exactly, the boundary state -- the body itself is evaluated (``T / C`` evaluations):
    its carry must equal the step rebuilt from the pieces, and its outputs the chunkwise
    outputs, by the step test of ``_checks.py``; and every output and the final carry must
    be finite.  Otherwise the loop's results are used (``on_failure='sequential'``), or the
    run fails (``'raise'``).  The steps inside a chunk are not evaluated again: they are the
    same pieces in masked matrix products."""
    from . import _checks
    from ._result import Reason, StageStats
    C = form.chunk
    finals, ys, starts = chunked_outputs(form, consts, h_leaves, xs, T, C, boundaries=True)
    on_failure = options.get("on_failure", "sequential")
    if not options.get("check", True):
        return list(finals), list(ys), StageStats.make(
            iterations=1, residual=jnp.nan, reason=Reason.NOT_CHECKED,
            evaluations=0)
    N = -(-T // C)
    idx = jnp.arange(N) * C
    before = [lf.uncanon(S, lead=1).astype(lf.dtype) for lf, S in zip(form.leaves, starts)]
    x_at = [v[idx] for v in xs] if xs else []
    true_carry, true_ys = jax.vmap(lambda h, x: body(h, x))(before, x_at) if xs else \
        jax.vmap(lambda h: body(h, []))(before)
    rebuilt, _ = jax.vmap(lambda h, x: form.body(consts, h, x))(before, x_at) if xs else \
        jax.vmap(lambda h: form.body(consts, h, []))(before)
    pairs = list(zip(rebuilt, true_carry)) + [(y[idx], t) for y, t in zip(ys, true_ys)]
    res = jnp.zeros((), jnp.float32)
    ok = jnp.asarray(True)
    for z, f in pairs:
        if not jnp.issubdtype(z.dtype, jnp.inexact):
            ok = ok & jnp.all(z == f)
            continue
        tol = _checks.element_tolerances([z.dtype], [1], options.get("rtol"),
                                         options.get("atol"))
        r, good = _checks.check(jnp.reshape(z, (N, -1)), jnp.reshape(f, (N, -1)), tol.rtol,
                                tol.atol)
        res = jnp.maximum(res, r.astype(jnp.float32))
        ok = ok & good
    finite = jnp.asarray(True)
    for v in list(finals) + list(ys):
        if jnp.issubdtype(v.dtype, jnp.inexact):
            finite = finite & jnp.all(jnp.isfinite(v))
    ok = jax.lax.stop_gradient(ok & finite)
    res = jax.lax.stop_gradient(jnp.where(finite, res, jnp.inf))
    fell_back = jnp.asarray(False)
    if on_failure == "sequential":
        def loop():
            f, y = lax.scan(lambda h, x: body(h, [] if x is None else x), list(h_leaves),
                            list(xs) if xs else None, length=T)
            return list(f), list(y)
        finals, ys = _checks.with_fallback((finals, ys), ok, loop)
        fell_back = ~ok
    elif raiser is not None and on_failure == "raise":
        raiser(ok, res, "chunked")
    reason = jnp.where(ok, Reason.CONVERGED, jnp.where(finite, Reason.CHECK_FAILED,
                                                       Reason.NON_FINITE))
    stats = StageStats.make(iterations=1, residual=res, converged=ok, fell_back=fell_back,
                            reason=reason, evaluations=N + jnp.where(fell_back, T, 0))
    return list(finals), list(ys), stats


__all__ = ["chunked_outputs", "chunked_scan", "leaf_readouts", "pieces_all", "run_chunked"]
