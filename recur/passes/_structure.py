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

A ``dense`` Jacobian whose pattern is sparse (banded, cyclic -- Lorenz-96's ``x_i`` reads
``x_{i-2}, x_{i-1}, x_i, x_{i+1}``) gets a **column colouring**: columns that share no
nonzero row get the same colour, so one JVP with the tangent ``Σ_{colour(j) = c} e_j``
gives, in every row ``i``, the single entry ``J[i, j]`` of the column ``j`` of colour ``c``
that row ``i`` reads (``J[i, j] = (J e_{colour(j)})_i`` where ``S[i, j]``, else 0).  The
whole Jacobian then costs ``c`` JVPs instead of ``n`` (Curtis--Powell--Reid).  Colours are
a greedy colouring of the column-intersection graph (``networkx.greedy_color``:
``largest_first``, and ``smallest_last`` too on graphs of at most 20k edges, keeping the
fewer colours; none above 250k edges, where the pattern is nearly dense); the largest row
count of ``S`` is a lower bound (Lorenz-96: 4 colours for any ``n`` divisible by 4 and
``n = 40``).  It is kept only when ``c < n``; the reported kind stays ``dense``.  The
diagonal is read off the same JVPs: ``diag(J)_i = (J e_{colour(i)})_i`` where ``S[i, i]``
(column ``i`` holds row ``i``, so no other column of its colour does), else 0.

Graphs get large (a dense 1024-state has a million edges), so components are computed
with ``scipy.sparse.csgraph``; ``networkx`` is used for the colouring (bounded graphs) and
the user-facing graph.
"""

from __future__ import annotations


import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph

from .._ir import Structure

# Column-intersection graphs (edges) up to which a second greedy ordering is tried
# (``smallest_last`` costs ~3 ms per 1000 edges), and above which no colouring is made
# (building the graph alone costs ~0.1 s per 100k edges; such patterns are nearly dense).
_SECOND_ORDERING_MAX_EDGES = 20_000
_COLOURING_MAX_EDGES = 250_000


def column_colouring(pattern: np.ndarray, max_edges: int | None = None, *,
                     transposed: sp.spmatrix | None = None) -> np.ndarray | None:
    """A proper colouring of the columns of the boolean ``(r, n)`` ``pattern``: columns
    that share a nonzero row get different colours.  ``(n,)`` int64 in ``0..c-1``, colours
    numbered by their first column; greedy (networkx), the fewer colours of two orderings
    on small graphs.  ``None`` when the column-intersection graph has more than
    ``max_edges`` edges.  ``transposed``: ``pattern.T`` as a scipy sparse matrix, when the
    caller has it (converting a large dense pattern is most of the cost)."""
    import networkx as nx

    pattern = np.asarray(pattern, dtype=bool)
    n = pattern.shape[1]
    if n == 0:
        return np.zeros(0, np.int64)
    st = sp.csr_matrix(pattern.T) if transposed is None else transposed
    st = st.astype(np.int32)  # S^T (n, rows): integer products, no overflow
    inter = (st @ st.T).tocoo()  # columns j, j' share a row <=> (S^T S)[j, j'] != 0
    keep = inter.row < inter.col
    if max_edges is not None and int(keep.sum()) > max_edges:
        return None
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(zip(inter.row[keep].tolist(), inter.col[keep].tolist()))
    lower = int(pattern.sum(axis=1).max(initial=0))  # a row's columns all differ
    best = None
    for strategy in ("largest_first", "smallest_last"):
        if best is not None and (max(best.values(), default=-1) + 1 <= max(lower, 1)
                                 or graph.number_of_edges() > _SECOND_ORDERING_MAX_EDGES):
            break
        found = nx.greedy_color(graph, strategy=strategy)
        if best is None or max(found.values()) < max(best.values()):
            best = found
    raw = np.array([best[j] for j in range(n)], dtype=np.int64)
    _, first = np.unique(raw, return_index=True)
    order = np.argsort(first, kind="stable")  # renumber by first column: deterministic
    relabel = np.empty(len(first), dtype=np.int64)
    relabel[np.unique(raw)[order]] = np.arange(len(first))
    return relabel[raw]


def is_proper_colouring(pattern: np.ndarray, colours: np.ndarray) -> bool:
    """No row of ``pattern`` has two nonzero columns of the same colour."""
    pattern = np.asarray(pattern, dtype=bool)
    c = int(colours.max(initial=-1)) + 1
    counts = pattern.astype(np.int64) @ np.eye(c, dtype=np.int64)[colours]  # (rows, c)
    return bool(np.all(counts <= 1))


def _dense(n: int, n_scc: int, scc_labels: np.ndarray, pattern: np.ndarray,
           transposed: sp.spmatrix | None = None) -> Structure:
    colours = None
    if not pattern.all() and int(pattern.sum(axis=1).max()) < n:
        found = column_colouring(pattern, _COLOURING_MAX_EDGES, transposed=transposed)
        if found is not None and int(found.max()) + 1 < n:
            colours = found
    return Structure("dense", n, np.arange(n, dtype=np.int64)[None, :], (n,), n_scc,
                     scc_labels, colours=colours,
                     pattern=None if colours is None else np.array(pattern, dtype=bool))


def _layout(labels: np.ndarray, n_comp: int, k: int) -> np.ndarray:
    blocks = -np.ones((n_comp, k), dtype=np.int64)
    fill = np.zeros(n_comp, dtype=np.int64)
    for e, c in enumerate(labels):
        blocks[c, fill[c]] = e
        fill[c] += 1
    return blocks


def analyse_structure(pattern) -> Structure:
    """The structure of a pattern (dense or scipy sparse; made dense only for a dense
    Jacobian's colouring)."""
    n = pattern.shape[0]
    if n == 0:
        return Structure("zero", 0, np.zeros((0, 0), np.int64), (), 0, np.zeros(0, np.int64))
    sparse = sp.csr_matrix(pattern)
    graph = sparse.T.tocsr()  # edge j -> i for S[i, j]
    n_scc, scc_labels = csgraph.connected_components(graph, directed=True, connection="strong")
    if not sparse.nnz:
        blocks = np.arange(n, dtype=np.int64)[:, None]
        return Structure("zero", 0, blocks, (1,) * n, int(n_scc), scc_labels)
    n_comp, labels = csgraph.connected_components(graph, directed=True, connection="weak")
    sizes = np.bincount(labels, minlength=n_comp)
    k = int(sizes.max())
    if k == 1:
        blocks = np.arange(n, dtype=np.int64)[:, None]
        return Structure("diagonal", 1, blocks, (1,) * n, int(n_scc), scc_labels)
    if k == n or n_comp * k * k >= n * n:
        dense = sparse.toarray() if sp.issparse(pattern) else pattern
        return _dense(n, int(n_scc), scc_labels, np.asarray(dense, dtype=bool), graph)
    order = np.argsort([min(np.flatnonzero(labels == c)) for c in range(n_comp)], kind="stable")
    relabel = np.empty(n_comp, dtype=np.int64)
    relabel[order] = np.arange(n_comp)
    labels = relabel[labels]
    blocks = _layout(labels, n_comp, k)
    return Structure(f"block({k})", k, blocks, tuple(int(s) for s in sizes[order]), int(n_scc),
                     scc_labels)


__all__ = ["Structure", "analyse_structure", "column_colouring", "is_proper_colouring"]
