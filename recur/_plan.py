"""``Plan`` and ``Stage``: what recur found in a step function and what it will run."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import networkx as nx

KIND_ORDER = ("linear", "affine", "diagonal", "block-diagonal", "nonlinear")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a plan: a set of states evaluated together with one method.

    ``states`` are leaf names (``jax.tree_util.keystr`` of the leaf, or ``"h"`` for a bare
    array state); ``kind`` is one of ``KIND_ORDER``; ``jacobian`` is ``"zero"``,
    ``"identity"``, ``"scalar"``, ``"diagonal"``, ``"block(k)"`` or ``"dense"``.
    """

    states: tuple[str, ...]
    kind: str
    jacobian: str
    method: str
    reads: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (state, states it reads)
    evidence: str = ""
    why: str = ""
    blocks: tuple[int, ...] = ()  # block sizes, when the Jacobian has blocks
    estimates: tuple[tuple[str, Any], ...] = ()  # (name, value): work, depth, memory...
    rejected: tuple[tuple[str, str], ...] = ()  # (method, reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "states": list(self.states),
            "kind": self.kind,
            "jacobian": self.jacobian,
            "method": self.method,
            "reads": {s: list(r) for s, r in self.reads},
            "evidence": self.evidence,
            "why": self.why,
            "blocks": list(self.blocks),
            "estimates": dict(self.estimates),
            "rejected": dict(self.rejected),
        }


@dataclasses.dataclass(frozen=True)
class Plan:
    """How recur will evaluate a recurrence (see ``explain()``)."""

    kind: str
    method: str
    stages: tuple[Stage, ...]
    backend: str
    length: int
    reverse: bool
    n_state: int
    dtype: str
    notes: tuple[str, ...] = ()
    passes: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False)
    edges: tuple[tuple[str, str, int], ...] = dataclasses.field(default=(), repr=False)
    state_sizes: tuple[tuple[str, int], ...] = dataclasses.field(default=(), repr=False)
    state_kinds: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False)
    options: tuple[tuple[str, Any], ...] = dataclasses.field(default=(), repr=False)
    _ir: Any = dataclasses.field(default=None, repr=False, compare=False)
    _stages: Any = dataclasses.field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "method": self.method,
            "backend": self.backend,
            "length": self.length,
            "reverse": self.reverse,
            "n_state": self.n_state,
            "dtype": self.dtype,
            "stages": [s.to_dict() for s in self.stages],
            "notes": list(self.notes),
            "state_kinds": dict(self.state_kinds),
            "graph": {"nodes": {n: s for n, s in self.state_sizes},
                      "edges": [[u, v, w] for u, v, w in self.edges]},
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def graph(self) -> nx.DiGraph:
        """State dependency graph: an edge ``u -> v`` when the new ``v`` reads the old ``u``
        (``weight``: number of element pairs); node attribute ``size``: elements."""
        g = nx.DiGraph()
        for name, size in self.state_sizes:
            g.add_node(name, size=size)
        for u, v, w in self.edges:
            g.add_edge(u, v, weight=w)
        return g

    def explain(self) -> str:
        """A human-readable report of the plan."""
        lines = [
            f"recur plan: {self.kind}, method {self.method}, for backend {self.backend}",
            f"  T = {self.length}{' (reverse)' if self.reverse else ''}, "
            f"{self.n_state} state elements, compute dtype {self.dtype}",
        ]
        for i, st in enumerate(self.stages):
            lines.append(f"stage {i}: {', '.join(st.states)}")
            for s, r in st.reads:
                lines.append(f"  {s} reads {', '.join(r) if r else 'no state'}")
            lines.append(f"  kind      {st.kind}: {st.evidence}")
            blocks = ""
            if st.blocks and st.jacobian.startswith("block"):
                sizes = sorted(set(st.blocks))
                blocks = f" ({len(st.blocks)} blocks of size " \
                         f"{'/'.join(str(s) for s in sizes)}" \
                         f"{', padded to the largest' if len(sizes) > 1 else ''})"
            lines.append(f"  jacobian  {st.jacobian}{blocks}")
            lines.append(f"  method    {st.method}: {st.why}")
            if st.estimates:
                est = ", ".join(f"{k} {_fmt(v)}" for k, v in st.estimates)
                lines.append(f"  estimate  {est}")
            for m, why in st.rejected:
                lines.append(f"  rejected  {m}: {why}")
        for note in self.notes:
            lines.append(f"note: {note}")
        return "\n".join(lines)

    def explain_passes(self) -> str:
        """The printable output of every analysis pass (like a compiler's print-after-all)."""
        return "\n\n".join(f"== {name} ==\n{text}" for name, text in self.passes)

    def __str__(self) -> str:
        return self.explain()


def _fmt(v: Any) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(v) >= scale:
                return f"{v / scale:.3g}{unit}"
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    return str(v)


__all__ = ["Plan", "Stage", "KIND_ORDER"]
