r"""Stage decomposition: the condensation of the element graph, cut into topological levels.

The element graph has an edge ``j -> i`` when the new element ``i`` reads the old
element ``j``.  Its strongly connected components (SCCs) are the sets of elements that
feed each other over time; contracting them gives a DAG (the condensation).  A **stage**
is one topological level of that DAG — the SCCs whose longest chain of predecessors has
the same length — so stage ``s`` reads only its own elements and those of stages
``< s``:

    h'_{E_s} = f_{E_s}(h_{E_s}, h_{E_{<s}}, x).

Given the trajectories of the earlier stages, stage ``s`` is a recurrence of its own, in
its own state, with the earlier stages' previous values as extra inputs; it is classified
and lowered on its own (a Kalman filter's covariance is a nonlinear stage that reads
only itself; the mean is then affine given it).  The SCCs inside a stage do not read
each other, so they are the stage's blocks and run side by side.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph


def stage_elements(pattern) -> list[np.ndarray]:
    """Flat element indices of each stage, in execution order (``pattern``: dense or
    scipy sparse)."""
    n = pattern.shape[0]
    if n == 0:
        return []
    pattern = sp.csr_matrix(pattern)
    graph = pattern.T.tocsr()  # edge j -> i for pattern[i, j]
    n_scc, labels = csgraph.connected_components(graph, directed=True, connection="strong")
    rows, cols = pattern.nonzero()  # new rows[k] reads old cols[k]
    src, dst = labels[cols], labels[rows]
    cross = src != dst
    edges = np.unique(np.stack([src[cross], dst[cross]], axis=1), axis=0) \
        if cross.any() else np.zeros((0, 2), np.int64)
    level = np.zeros(n_scc, dtype=np.int64)
    if len(edges):
        dag = sp.csr_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])),
                            shape=(n_scc, n_scc))
        indeg = np.asarray((dag > 0).sum(axis=0)).ravel()
        order, frontier = [], list(np.flatnonzero(indeg == 0))
        succ = [dag.indices[dag.indptr[u]:dag.indptr[u + 1]] for u in range(n_scc)]
        while frontier:  # Kahn's algorithm; the condensation is acyclic by construction
            u = frontier.pop()
            order.append(u)
            for v in succ[u]:
                level[v] = max(level[v], level[u] + 1)
                indeg[v] -= 1
                if indeg[v] == 0:
                    frontier.append(v)
    element_level = level[labels]
    return [np.flatnonzero(element_level == lv) for lv in range(int(level.max()) + 1)]


__all__ = ["stage_elements"]
