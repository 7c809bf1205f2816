r"""Sequence parallelism: the time axis split over the devices of one mesh axis.

Layout
------
The (padded) sequence of ``T' = D L`` steps is cut into ``D`` contiguous pieces of ``L``
steps, one per device along a mesh axis (``shard_map``); the device at *position* ``p``
holds the global steps ``p L, ..., p L + L - 1`` of the processing order.  For
``reverse=True`` the program flips time; a flip of a sharded axis is a local flip on every
device plus the reversed order of the devices, so ``TimeAxis.reversed`` makes position
``p`` the device ``D - 1 - p`` instead of moving data.  When ``D`` does not divide ``T``
the inputs are padded at the end of the processing order with copies of the last input;
padded steps come after every real step, so they never influence one, and they are
masked out of every residual, convergence test and Lyapunov estimate.

The runtime's solvers are written against a handful of primitives that are local
operations without an axis and collectives with one:

* ``shift(Z, z_0)_t = z_{t-1}``: the first local step receives the previous device's
  last state (``ppermute``, one state of ``n`` elements per device boundary);
* ``shift_back``: the same in the other direction (adjoint recurrences);
* reductions over time (``max``, ``any``, ``sum``: ``pmax``/``psum`` of a scalar or of
  ``n`` values);
* the affine scan (``runtime/_scan.py``): every device composes its ``L`` steps into
  one affine map ``(P_p, S_p)`` (its *summary*), the ``D`` summaries are exchanged with
  one ``all_gather`` (``D (k^2 m + n)`` numbers: ``D · 2n`` for a diagonal), every device
  runs the length-``D`` recurrence ``H_p = P_p H_{p-1} + S_p`` over them to find the state
  entering its piece, and scans its piece from there;
* the sequential loop (the fallback, and ``method="sequential"``): ``D`` rounds; in each,
  every device runs its piece from the state it last received and passes its final state
  on.  After round ``r`` the first ``r + 1`` pieces are exact, so ``D`` rounds give the
  loop's answer with the wall time of one loop over ``T`` steps and no gathering of the
  inputs (``D`` times the work).

Other mesh axes (``others``) carry a batch of sequences under ``jax.vmap(...,
spmd_axis_name=...)``: different devices along them solve different sequences, so their
loops would stop after different numbers of iterations.  A loop or conditional with
collectives inside must take the same path on every device of the mesh (a
``collective_permute`` is one rendezvous of all of them), so ``while_loop`` runs until
every device's condition is false (a ``pmax`` over the other axes) and keeps a finished
state unchanged, and ``uniform`` makes a conditional's predicate the same everywhere.

Communication per Newton/quasi-Newton/Picard iteration is therefore a few states per
device boundary plus one gather of the summaries and a scalar all-reduce, independent of
``T``.  Everything here is linear in the data it moves, so JAX transposes it (``ppermute``
to the opposite ``ppermute``, ``all_gather`` to ``psum_scatter``) and the derivatives of
the sharded program are the single-device ones.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class TimeAxis:
    """The time axis split over ``size`` devices of the mesh axis ``name``."""

    name: str
    size: int       # devices along the axis
    length: int     # padded length D * L
    valid: int      # real steps (the rest is padding at the end of the processing order)
    reversed: bool = False

    @property
    def local(self) -> int:
        return self.length // self.size


_CURRENT: contextvars.ContextVar[TimeAxis | None] = contextvars.ContextVar(
    "recur_time_axis", default=None)


def current() -> TimeAxis | None:
    """The time axis of the program being traced, or ``None`` (one device)."""
    return _CURRENT.get()


@contextlib.contextmanager
def along(axis: TimeAxis | None) -> Iterator[None]:
    """Trace the runtime with the time axis split as ``axis`` says."""
    token = _CURRENT.set(axis)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def position(ax: TimeAxis) -> jax.Array:
    """This device's piece of the processing order (0 .. D-1)."""
    i = lax.axis_index(ax.name)
    return ax.size - 1 - i if ax.reversed else i


def _perm(ax: TimeAxis, forward: bool) -> list[tuple[int, int]]:
    """Device pairs sending position ``p`` to ``p + 1`` (``forward``) or ``p - 1``."""
    step = (1 if forward else -1) * (-1 if ax.reversed else 1)
    return [(i, i + step) for i in range(ax.size) if 0 <= i + step < ax.size]


def _tree_ppermute(tree: Any, ax: TimeAxis, forward: bool) -> Any:
    perm = _perm(ax, forward)
    return jax.tree_util.tree_map(lambda v: lax.ppermute(v, ax.name, perm), tree)


def shift(zs: jax.Array, first: jax.Array) -> jax.Array:
    """``out_t = zs_{t-1}``, ``out_0 = first`` (global step 0)."""
    ax = current()
    if ax is None:
        return jnp.concatenate([first[None], zs[:-1]], axis=0)
    prev_last = lax.ppermute(zs[-1], ax.name, _perm(ax, True))
    head = jnp.where(position(ax) == 0, first, prev_last)
    return jnp.concatenate([head[None], zs[:-1]], axis=0)


def shift_back(zs: jax.Array, last: jax.Array) -> jax.Array:
    """``out_t = zs_{t+1}``, ``out_{T-1} = last`` (the global last step)."""
    ax = current()
    if ax is None:
        return jnp.concatenate([zs[1:], last[None]], axis=0)
    next_first = lax.ppermute(zs[0], ax.name, _perm(ax, False))
    tail = jnp.where(position(ax) == ax.size - 1, last, next_first)
    return jnp.concatenate([zs[1:], tail[None]], axis=0)


def from_first_step(v: jax.Array) -> jax.Array:
    """``v`` as held by the device with global step 0, on every device."""
    ax = current()
    if ax is None:
        return v
    return lax.psum(jnp.where(position(ax) == 0, v, jnp.zeros_like(v)), ax.name)


def value_at(v: jax.Array, index: int) -> jax.Array:
    """``v[index]`` for a global step ``index`` of the processing order, on every device."""
    ax = current()
    if ax is None:
        return v[index]
    L = v.shape[0]
    mine = position(ax) == index // L
    key = jnp.issubdtype(v.dtype, jax.dtypes.prng_key)
    local = jax.random.key_data(v[index % L]) if key else v[index % L]
    local = local.astype(jnp.int32) if local.dtype == jnp.bool_ else local
    out = lax.psum(jnp.where(mine, local, jnp.zeros_like(local)), ax.name)
    if key:
        return jax.random.wrap_key_data(out, impl=jax.random.key_impl(v))
    return out.astype(v.dtype)


def step_index(local_length: int) -> jax.Array | None:
    """Global indices (processing order) of the local steps, or ``None`` on one device."""
    ax = current()
    if ax is None:
        return None
    return position(ax) * local_length + jnp.arange(local_length, dtype=jnp.int32)


def valid_steps(local_length: int) -> jax.Array | None:
    """Which local steps are real (not padding); ``None`` when all are."""
    ax = current()
    if ax is None or ax.valid == ax.length:
        return None
    return step_index(local_length) < ax.valid


def global_steps(local_length: int) -> jax.Array:
    """Global indices (processing order) of the local steps, on one device too."""
    index = step_index(local_length)
    return jnp.arange(local_length, dtype=jnp.int32) if index is None else index


def global_length(local_length: int) -> int:
    """The real number of steps ``T`` of the whole sequence."""
    ax = current()
    return local_length if ax is None else ax.valid


# The reductions over time serve residuals, stopping tests and estimates only: they carry
# no derivatives (``pmax`` has no differentiation rule, and none is wanted).

def reduce_max(x: jax.Array) -> jax.Array:
    ax = current()
    return x if ax is None else lax.pmax(lax.stop_gradient(x), ax.name)


def reduce_sum(x: jax.Array) -> jax.Array:
    ax = current()
    return x if ax is None else lax.psum(lax.stop_gradient(x), ax.name)


def reduce_min(x: jax.Array) -> jax.Array:
    ax = current()
    return x if ax is None else lax.pmin(lax.stop_gradient(x), ax.name)


def reduce_any(flag: jax.Array) -> jax.Array:
    ax = current()
    if ax is None:
        return flag
    return lax.pmax(flag.astype(jnp.int32), ax.name) > 0


def _others(ax: TimeAxis | None) -> tuple[str, ...]:
    """The other manual axes of the program being traced (those of a vmap-ed batch split
    with ``spmd_axis_name``; a batch over an ``Explicit`` axis stays in XLA's hands, which
    reduces a loop's batched condition over all of it)."""
    if ax is None:
        return ()
    mesh = jax.sharding.get_abstract_mesh()
    return tuple(name for name, kind in zip(getattr(mesh, "axis_names", ()),
                                            getattr(mesh, "axis_types", ()))
                 if kind == jax.sharding.AxisType.Manual and name != ax.name)


def uniform(flag: jax.Array) -> jax.Array:
    """``flag`` true on every device of the mesh where it is true on one device along the
    other axes (a conditional with collectives inside takes one path everywhere)."""
    others = _others(current())
    if not others:
        return flag
    return lax.pmax(flag.astype(jnp.int32), others) > 0


def while_loop(cond: Callable[[Any], jax.Array], body: Callable[[Any], Any], state: Any) -> Any:
    """``lax.while_loop`` with the same number of trips on every device of the mesh: it runs
    while ``cond`` holds on some device along the other axes, and a state whose own ``cond``
    is false stays as it is (see the module docstring)."""
    if not _others(current()):
        return lax.while_loop(cond, body, state)

    def frozen(s):
        go = cond(s)
        return jax.tree_util.tree_map(lambda new, old: jnp.where(go, new, old), body(s), s)

    return lax.while_loop(lambda s: uniform(cond(s)), frozen, state)


def gather(x: jax.Array) -> jax.Array:
    """``x`` of every device, stacked in position order (leading axis ``D``)."""
    ax = current()
    stacked = lax.all_gather(x, ax.name)
    return jnp.flip(stacked, 0) if ax.reversed else stacked


def pick(stacked: jax.Array, index: jax.Array) -> jax.Array:
    return lax.dynamic_index_in_dim(stacked, index, axis=0, keepdims=False)


def sequential(step: Callable[[Any, Any], Any], h0: Any, xs: Any, *, length: int) -> Any:
    """The loop ``h_t = step(h_{t-1}, x_t)`` over the sharded sequence, in ``D`` rounds
    (see the module docstring); returns the local piece of every state."""
    ax = current()

    def run(h, keep):
        def body(h, x):
            h = step(h, x)
            return h, (h if keep else None)
        return lax.scan(body, h, xs, length=length)

    if ax is None or ax.size == 1:
        return run(h0, True)[1]
    first = position(ax) == 0

    def one_round(_, h_in):
        last, _ = run(h_in, False)
        received = _tree_ppermute(last, ax, True)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(first, a, b), h0, received)

    h_in = lax.fori_loop(0, ax.size - 1, one_round, h0)
    return run(h_in, True)[1]


__all__ = ["TimeAxis", "current", "along", "shift", "shift_back", "from_first_step", "value_at",
           "step_index", "global_steps", "valid_steps", "global_length", "reduce_max",
           "reduce_sum", "reduce_min", "reduce_any", "uniform", "while_loop", "gather",
           "pick", "sequential", "position"]
