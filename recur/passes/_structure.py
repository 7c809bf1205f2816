r"""Structure pass: the element graph of the state Jacobian, its components and blocks.

The sparsity pattern ``S`` (``S[i, j]``: new element ``i`` reads old element ``j``) is the
adjacency matrix of the *element graph* with an edge ``j -> i`` per nonzero.

* Its strongly connected components (SCCs) are the sets of elements that feed each other
  over time; their condensation is a DAG whose topological levels are the stages of a
  staged plan.
* Its weakly connected components are the diagonal blocks of ``S`` after a permutation:
  ``P S P^T = blockdiag(B_1, ..., B_m)``.  All of size 1: ``diagonal``; all of size
  ``k``: ``block(k)``; unequal sizes are padded to the largest ``k`` (padded rows and
  columns of ``A`` are zero, so they stay exactly zero) unless ``m k^2 >= n^2``, when the
  dense form is no more expensive; one component of size ``n``: ``dense``.

Graphs get large (a dense 1024-state has a million edges), so components are computed
with ``scipy.sparse.csgraph``; ``networkx`` is used only for the user-facing graph.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph


@dataclasses.dataclass(frozen=True)
class Structure:
    """Jacobian structure of the state update.

    ``blocks`` is an ``(m, k)`` integer array of flat state indices, one row per block,
    padded with ``-1``; the scan runtime permutes the state into this layout.
    """

    jacobian: str  # zero | diagonal | block(k) | dense (identity/scalar refined by lowering)
    block_size: int
    blocks: np.ndarray = dataclasses.field(repr=False)
    block_sizes: tuple[int, ...]
    n_scc: int
    scc_labels: np.ndarray = dataclasses.field(repr=False)

    @property
    def padded(self) -> bool:
        return len(set(self.block_sizes)) > 1

    @property
    def n_blocks(self) -> int:
        return int(self.blocks.shape[0])


def _layout(labels: np.ndarray, n_comp: int, k: int) -> np.ndarray:
    blocks = -np.ones((n_comp, k), dtype=np.int64)
    fill = np.zeros(n_comp, dtype=np.int64)
    for e, c in enumerate(labels):
        blocks[c, fill[c]] = e
        fill[c] += 1
    return blocks


def analyse_structure(pattern: np.ndarray) -> Structure:
    n = pattern.shape[0]
    if n == 0:
        return Structure("zero", 0, np.zeros((0, 0), np.int64), (), 0, np.zeros(0, np.int64))
    graph = sp.csr_matrix(pattern.T)  # edge j -> i for S[i, j]
    n_scc, scc_labels = csgraph.connected_components(graph, directed=True, connection="strong")
    if not pattern.any():
        blocks = np.arange(n, dtype=np.int64)[:, None]
        return Structure("zero", 0, blocks, (1,) * n, int(n_scc), scc_labels)
    n_comp, labels = csgraph.connected_components(graph, directed=True, connection="weak")
    sizes = np.bincount(labels, minlength=n_comp)
    k = int(sizes.max())
    if k == 1:
        blocks = np.arange(n, dtype=np.int64)[:, None]
        return Structure("diagonal", 1, blocks, (1,) * n, int(n_scc), scc_labels)
    if k == n or n_comp * k * k >= n * n:
        return Structure("dense", n, np.arange(n, dtype=np.int64)[None, :], (n,), int(n_scc),
                         scc_labels)
    order = np.argsort([min(np.flatnonzero(labels == c)) for c in range(n_comp)], kind="stable")
    relabel = np.empty(n_comp, dtype=np.int64)
    relabel[order] = np.arange(n_comp)
    labels = relabel[labels]
    blocks = _layout(labels, n_comp, k)
    return Structure(f"block({k})", k, blocks, tuple(int(s) for s in sizes[order]), int(n_scc),
                     scc_labels)


__all__ = ["Structure", "analyse_structure"]
