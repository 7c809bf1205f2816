"""The types every layer shares: the traced step (``StepIR``), its leaves, the Jacobian
``Structure`` found by the passes, a stage's data, and the step's evaluation on flat
element vectors (``ElementView``).

Data flows one way -- front end -> IR -> passes -> plan -> runtime -- and this module is
what both the passes and the runtime import, so neither imports the other.

Elements
--------
Every state leaf is raveled, and the leaves are concatenated in pytree order: element
``e`` of the state is element ``e - offsets[i]`` of leaf ``i``.  A typed PRNG key leaf
(``jax.random.key``) of shape ``s`` has ``prod(s)`` elements (one per key).  The analysis
passes work on this element space.  Solvers work on a stage's *inexact* elements as one
flat vector ``z`` in the stage's compute dtype (the result type of its leaves, at least
float32); integer, boolean and key elements are never put in a float vector -- they are
computed exactly, by the loop, as leaves.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._dtypes import dtype_name, is_complex, is_inexact
from ._jax_adapter import ClosedJaxpr, as_closed, eval_jaxpr, is_jaxpr


@dataclasses.dataclass(frozen=True)
class LeafInfo:
    """One flattened leaf: its name (``jax.tree_util.keystr`` of its path), shape, dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: Any
    weak: bool = False  # a weakly typed value (a Python scalar): promotes like lax.scan's

    @property
    def aval(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(self.shape, self.dtype, weak_type=self.weak)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def exact(self) -> bool:
        """Integer, boolean or key: computed exactly, never through a float vector."""
        return not is_inexact(self.dtype)

    def describe(self) -> str:
        return f"{dtype_name(self.dtype)}{list(self.shape)}"


def _callables(jaxpr, out: list) -> None:
    for eqn in jaxpr.eqns:
        for value in eqn.params.values():
            for sub in (value if isinstance(value, (tuple, list)) else (value,)):
                if is_jaxpr(sub):
                    _callables(as_closed(sub).jaxpr, out)
                elif callable(sub) and not isinstance(sub, type):
                    out.append(sub)


def call_step(fn, h, x, params, has_params: bool):
    return fn(h, x, params) if has_params else fn(h, x)


@dataclasses.dataclass(frozen=True)
class StepIR:
    """A traced step function ``h_next = fn(h, x_t[, params])`` and its leaves."""

    fn: Callable[..., Any] = dataclasses.field(repr=False)
    has_params: bool
    state_treedef: Any
    state: tuple[LeafInfo, ...]
    input_treedef: Any  # None when xs is None
    inputs: tuple[LeafInfo, ...]  # per-step shapes (leading T removed)
    param_treedef: Any
    params: tuple[LeafInfo, ...]
    length: int
    reverse: bool
    jaxpr: ClosedJaxpr = dataclasses.field(repr=False)
    # operations of the step that forward-mode autodiff cannot go through (custom_vjp
    # functions, callbacks): methods that need JVPs of the step cannot run it
    jvp_blockers: tuple[str, ...] = ()

    @property
    def has_jvp(self) -> bool:
        return not self.jvp_blockers

    @property
    def n_state(self) -> int:
        return sum(leaf.size for leaf in self.state)

    @functools.cached_property
    def key(self) -> tuple:
        """What identifies the traced step: its jaxpr's text, the Python callables in its
        parameters (custom rules), the pytree structures, direction and length."""
        found: list = []
        _callables(self.jaxpr.jaxpr, found)
        return (str(self.jaxpr.jaxpr), tuple(found), self.state_treedef, self.input_treedef,
                self.param_treedef, self.reverse, self.length)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start of each state leaf in the element space (leaves raveled, in order)."""
        return tuple(int(o) for o in np.cumsum([0] + [leaf.size for leaf in self.state])[:-1])

    @property
    def exact_elements(self) -> np.ndarray:
        """``(n,)`` bool: the elements of integer, boolean and key leaves."""
        return np.concatenate([np.full(leaf.size, leaf.exact) for leaf in self.state]) \
            if self.state else np.zeros(0, bool)

    def leaf_of(self, element: int) -> int:
        return int(np.searchsorted(np.asarray(self.offsets), element, side="right") - 1)

    def element_name(self, i: int) -> str:
        """Name of state element ``i``, e.g. ``"['h'][3]"`` or ``"['P'][1, 2]"``."""
        for leaf, off in zip(self.state, self.offsets):
            if off <= i < off + leaf.size:
                if leaf.shape == ():
                    return leaf.name
                idx = np.unravel_index(i - off, leaf.shape)
                return f"{leaf.name}[{', '.join(str(int(j)) for j in idx)}]"
        raise IndexError(i)

    def call(self, h: Any, x: Any, params: Any) -> Any:
        """One step on pytrees, in the form the user asked for."""
        return call_step(self.fn, h, x, params, self.has_params)

    def flat_call(self, h_leaves, x_leaves, p_leaves) -> list[Any]:
        h = jax.tree_util.tree_unflatten(self.state_treedef, list(h_leaves))
        x = None if self.input_treedef is None else jax.tree_util.tree_unflatten(
            self.input_treedef, list(x_leaves))
        p = jax.tree_util.tree_unflatten(self.param_treedef, list(p_leaves))
        return jax.tree_util.tree_leaves(self.call(h, x, p))


@dataclasses.dataclass(frozen=True, eq=False)
class Structure:
    """Jacobian structure of the state update.

    ``blocks`` is an ``(m, k)`` integer array of flat state indices, one row per block,
    padded with ``-1``; the scan runtime permutes the state into this layout.

    ``colours`` (``dense`` only, ``None`` otherwise): an ``(n,)`` proper column colouring
    of ``pattern`` (the ``(n, n)`` boolean sparsity pattern, kept with it) in ``0..c-1``,
    ``c < n``; the runtime then extracts ``J`` from ``c`` JVPs (module docstring).

    ``hutchinson``: a solver hint set by lowering (option ``diagonal="hutchinson"``):
    quasi-DEER estimates ``diag(J_t)`` from this many Rademacher probes instead of
    computing it exactly; 0 (the default) is the exact diagonal.

    Equality and hashing are by value (``key()``), arrays included.
    """

    jacobian: str  # zero | diagonal | block(k) | dense (identity/scalar refined by lowering)
    block_size: int
    blocks: np.ndarray = dataclasses.field(repr=False)
    block_sizes: tuple[int, ...]
    n_scc: int
    scc_labels: np.ndarray = dataclasses.field(repr=False)
    colours: np.ndarray | None = dataclasses.field(default=None, repr=False)
    pattern: np.ndarray | None = dataclasses.field(default=None, repr=False)
    hutchinson: int = 0

    @property
    def padded(self) -> bool:
        return len(set(self.block_sizes)) > 1

    @property
    def n_blocks(self) -> int:
        return int(self.blocks.shape[0])

    @property
    def n_colours(self) -> int:
        """Colours of the column colouring (0: none)."""
        return 0 if self.colours is None else int(self.colours.max(initial=-1)) + 1

    @property
    def jvps_per_step(self) -> int:
        """JVPs that extract one step's Jacobian in this structure (and its diagonal)."""
        if self.jacobian == "zero":
            return 0
        if self.colours is not None:
            return self.n_colours
        return int(self.blocks.shape[1]) if self.blocks.size else 0

    def key(self) -> tuple:
        """A hashable value identifying the structure (arrays by content)."""
        def arr(a):
            return None if a is None else (a.shape, str(a.dtype), a.tobytes())
        pattern = None if self.pattern is None else (
            self.pattern.shape, np.packbits(self.pattern).tobytes())
        return (self.jacobian, self.block_size, arr(self.blocks), self.block_sizes,
                self.n_scc, arr(self.scc_labels), arr(self.colours), pattern,
                self.hutchinson)

    def __eq__(self, other):
        if not isinstance(other, Structure):
            return NotImplemented
        return self.key() == other.key()

    def __hash__(self):
        return hash(self.key())


@dataclasses.dataclass(frozen=True, eq=False)
class Outputs:
    """Per-step outputs of a ``jax.lax.scan`` body ``f(carry, x) -> (carry, y)``: the traced
    body (``(carry leaves, x leaves) -> (carry leaves, y leaves)``), the structure and
    leaves of one step's ``y``, and the loop's ``unroll``."""

    jaxpr: ClosedJaxpr = dataclasses.field(repr=False)
    treedef: Any
    leaves: tuple[LeafInfo, ...]
    unroll: Any = 1  # as jax.lax.scan takes it: a positive int, or True/False

    @functools.cached_property
    def key(self) -> tuple:
        found: list = []
        _callables(self.jaxpr.jaxpr, found)
        return (str(self.jaxpr.jaxpr), tuple(found), self.treedef, self.unroll)

    def body(self, consts: Sequence[Any]):
        """``(carry leaves, x leaves) -> (carry leaves, y leaves)`` with the body's closed-over
        arrays given explicitly."""
        closed = ClosedJaxpr(self.jaxpr.jaxpr, list(consts))
        n_y = len(self.leaves)

        def call(h_leaves, x_leaves):
            out = eval_jaxpr(closed, *h_leaves, *x_leaves)
            return out[:len(out) - n_y], out[len(out) - n_y:]

        return call


@dataclasses.dataclass(frozen=True, eq=False)
class StageData:
    """What the runtime needs of a stage: its state elements (sorted, in the element space)
    and the Jacobian structure of its inexact elements (in the stage's own order).  An
    ``exact`` stage holds integer, boolean or key elements and is run by the loop."""

    elements: np.ndarray
    structure: Structure
    exact: bool = False
    semiring: Any = None  # a ``_semiring_analysis.Claim``: the stage is linear in a semiring

    def key(self) -> tuple:
        return (self.elements.tobytes(), self.structure.key(), self.exact, self.semiring)


def compute_dtype(dtypes: Sequence[Any]) -> np.dtype:
    """The dtype solvers use for leaves of these dtypes: their result type, at least float32
    (bfloat16/float16 accumulate in float32); float32 when none is inexact."""
    inexact = [np.dtype(dt) for dt in dtypes if is_inexact(dt)]
    with jax.numpy_dtype_promotion("standard"):  # mixed precision is the user's choice
        dt = np.dtype(jnp.result_type(*inexact)) if inexact else np.dtype(jnp.float32)
    if not is_complex(dt) and dt.itemsize < 4:
        dt = np.dtype(jnp.float32)
    return dt


def jaxpr_step(ir: StepIR, consts: Sequence[Any]):
    """The traced step as ``(h leaves, x leaves, p leaves) -> h' leaves``, with the
    closed-over arrays given explicitly (so compiled programs never hold stale ones)."""
    closed = ClosedJaxpr(ir.jaxpr.jaxpr, list(consts))

    def call(h_leaves, x_leaves, p_leaves):
        return eval_jaxpr(closed, *h_leaves, *x_leaves, *p_leaves)

    call.closed = closed  # the semiring scan evaluates the same jaxpr in its own modes
    return call


class ElementView:
    """Some inexact elements of the state as one flat vector ``z`` and back.

    ``elements`` are sorted element indices (``StepIR`` element space) that all belong to
    inexact leaves; ``z`` holds them in that order in ``dtype`` (default: the compute dtype
    of the leaves they touch).  ``scatter`` writes ``z`` into a full set of state leaves
    (``background`` supplies every element not in the view; it may be omitted when the
    view covers whole leaves only and no other leaf exists).
    """

    def __init__(self, ir: StepIR, elements: np.ndarray, dtype=None):
        self.ir = ir
        elements = np.asarray(elements, dtype=np.int64)
        self.elements = elements
        self.n = int(elements.shape[0])
        offs = ir.offsets
        self.parts = []  # (leaf index, local indices or None for the whole leaf, start in z)
        start = 0
        for i, (leaf, off) in enumerate(zip(ir.state, offs)):
            local = elements[(elements >= off) & (elements < off + leaf.size)] - off
            if not len(local):
                continue
            if leaf.exact:
                raise ValueError(f"an element view holds only inexact elements; leaf "
                                 f"{leaf.name} is {leaf.describe()}")
            whole = len(local) == leaf.size
            self.parts.append((i, None if whole else local, start))
            start += len(local)
        self.dtype = np.dtype(dtype) if dtype is not None else compute_dtype(
            [ir.state[i].dtype for i, _, _ in self.parts])
        self.complete = len(self.parts) == len(ir.state) and all(
            local is None for _, local, _ in self.parts)

    @property
    def leaves(self) -> tuple[int, ...]:
        return tuple(i for i, _, _ in self.parts)

    def gather(self, leaves: Sequence[Any], *, lead: tuple[int, ...] = ()) -> jax.Array:
        """The view's elements of state ``leaves`` (each with leading axes ``lead``)."""
        if not self.parts:
            return jnp.zeros(lead + (0,), self.dtype)
        pieces = []
        for i, local, _ in self.parts:
            v = jnp.reshape(jnp.asarray(leaves[i]), lead + (-1,))
            if local is not None:
                v = v[..., jnp.asarray(local)]
            pieces.append(v.astype(self.dtype))
        return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=-1)

    def scatter(self, z: jax.Array, background: Sequence[Any] | None = None, *,
                lead: tuple[int, ...] = ()) -> list[Any]:
        """State leaves with the view's elements taken from ``z`` (cast to each leaf's
        dtype; the real part for a real leaf of a complex view)."""
        out = list(background) if background is not None else [None] * len(self.ir.state)
        for i, local, start in self.parts:
            leaf = self.ir.state[i]
            size = leaf.size if local is None else len(local)
            part = z[..., start:start + size]
            if not is_complex(leaf.dtype) and is_complex(self.dtype):
                part = jnp.real(part)
            part = part.astype(leaf.dtype)
            if local is None:
                out[i] = part.reshape(lead + leaf.shape)
            else:
                flat = jnp.reshape(jnp.asarray(out[i]), lead + (-1,))
                out[i] = flat.at[..., jnp.asarray(local)].set(part).reshape(lead + leaf.shape)
        return out


__all__ = ["LeafInfo", "StepIR", "Structure", "StageData", "Outputs", "ElementView", "call_step",
           "compute_dtype", "jaxpr_step"]
