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
    colours: int = 0  # dense with a sparse pattern: colours of its column colouring (JVPs)
    jacobian_note: str = ""  # e.g. "sparse pattern, 4 colours: 4 JVPs per step instead of 40"

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
            "colours": self.colours or None,
            "jacobian_note": self.jacobian_note,
        }


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the time axis is split across devices (sequence parallelism).

    ``axis_name`` is the mesh axis, ``devices`` the number of devices along it, each
    holding ``local_length`` consecutive steps; ``padding`` steps are appended to the
    processing order (and never count in a residual); ``communication`` lists, per
    stage, what one iteration exchanges between devices along time.  The other axes of
    the mesh: ``batch_axes`` carry a batch of sequences (``jax.vmap(...,
    spmd_axis_name=...)``), ``batched`` says whether the plan was made under ``vmap``;
    ``axes()`` describes every axis and its traffic.
    """

    axis_name: str
    devices: int
    local_length: int
    padding: int
    mesh_shape: tuple[tuple[str, int], ...] = ()
    communication: tuple[tuple[str, str], ...] = ()  # (stage states, text)
    batch_axes: tuple[str, ...] = ()
    batched: bool = False

    def axes(self) -> tuple[tuple[str, int, str], ...]:
        """``(axis, devices, what it carries and sends per iteration)`` per mesh axis."""
        out = []
        for name, size in self.mesh_shape:
            if name == self.axis_name:
                text = (f"time: {self.local_length} steps per device" +
                        (f", {self.padding} padded steps at the end (never counted in a "
                         "residual)" if self.padding else "") +
                        "; traffic per stage below")
            elif name in self.batch_axes:
                text = ("the batch of sequences (vmap spmd_axis_name): independent "
                        "sequences, no traffic per iteration")
            elif self.batched:
                text = ("not used: every device along it repeats the whole batch; pass "
                        f"spmd_axis_name={name!r} to jax.vmap to split the batch over it")
            else:
                text = ("not used by one sequence: a batch under jax.vmap(..., "
                        f"spmd_axis_name={name!r}) is split over it with no traffic per "
                        "iteration")
            out.append((name, size, text))
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        return {"axis_name": self.axis_name, "devices": self.devices,
                "local_length": self.local_length, "padding": self.padding,
                "mesh_shape": dict(self.mesh_shape),
                "communication": dict(self.communication),
                "batch_axes": list(self.batch_axes),
                "axes": {name: text for name, _, text in self.axes()}}


def boundary_chunk_length(T: int, structure, exact: bool, chunk=None) -> int | None:
    """The chunk length ``C`` of the boundary-state outputs path for one stage of ``T`` steps:
    the ``chunk`` option, else about ``√T`` (16 to 256: ``T / C`` states held against depth
    ``2 C``); None where the path does not apply (a structure not closed under products --
    a coloured sparse pattern --, exact leaves, fewer than two chunks).  The lowering's memory
    estimate and ``Plan.boundary_chunk`` both use it."""
    if exact or (structure.jacobian not in ("zero", "diagonal")
                 and structure.colours is not None):
        return None
    C = max(1, int(chunk)) if chunk else int(min(256, max(16, round(T ** 0.5))))
    return C if T // C >= 2 else None


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
    layout: Layout | None = None
    # per-step outputs (recur.lax): one ``recur._ir.LeafInfo`` per leaf of ``y``
    outputs: tuple = ()
    # What the runtime needs, typed: the traced step (``recur._ir.StepIR``), per stage its
    # elements and Jacobian structure (``recur._ir.StageData``), and the device mesh.
    ir: Any = dataclasses.field(default=None, repr=False, compare=False)
    stage_data: tuple = dataclasses.field(default=(), repr=False, compare=False)
    mesh: Any = dataclasses.field(default=None, repr=False, compare=False)
    # method ``chunked``: the body's chunkwise form (``recur._chunkform.ChunkForm``)
    chunked: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def option_dict(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def boundary_chunk(self) -> int | None:
        """For a one-stage ``scan`` plan on one device, run by ``recur.lax.scan`` (outputs,
        or ``None`` outputs and only the final carry): the chunk length ``C``
        of the path that keeps only chunk-boundary states (``runtime/_scan_outputs.py``):
        the ``chunk`` option, else about ``√T`` (16 to 256: ``T / C`` states against depth
        ``2 C``); None where that path does not apply (a structure not closed under
        products -- a coloured sparse pattern --, exact leaves, fewer than two chunks)."""
        if self.layout is not None or len(self.stages) != 1 \
                or self.stages[0].method != "scan" or not self.stage_data:
            return None
        data = self.stage_data[0]
        return boundary_chunk_length(self.length, data.structure, data.exact,
                                     self.option_dict.get("chunk"))

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
            "layout": None if self.layout is None else self.layout.to_dict(),
            "outputs": {leaf.name: leaf.describe() for leaf in self.outputs},
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
            note = f" ({st.jacobian_note})" if st.jacobian_note else ""
            lines.append(f"  jacobian  {st.jacobian}{blocks}{note}")
            lines.append(f"  method    {st.method}: {st.why}")
            if st.estimates:
                est = ", ".join(f"{k} {_fmt(v)}" for k, v in st.estimates)
                lines.append(f"  estimate  {est}")
            for m, why in st.rejected:
                lines.append(f"  rejected  {m}: {why}")
        if self.outputs:
            lines += self._outputs_lines()
        if self.layout is not None:
            lay = self.layout
            mesh = ", ".join(f"{k}={v}" for k, v in lay.mesh_shape)
            lines.append(f"across devices: time split over mesh axis {lay.axis_name!r} "
                         f"({lay.devices} devices; mesh {mesh}): {lay.local_length} steps per "
                         f"device" + (f", {lay.padding} padded steps at the end (never counted "
                                      "in a residual)" if lay.padding else ""))
            for states, text in lay.communication:
                lines.append(f"  {states}: {text}")
            if len(lay.mesh_shape) > 1:
                for name, size, text in lay.axes():
                    lines.append(f"  axis {name!r} ({size} devices): {text}")
        for note in self.notes:
            lines.append(f"note: {note}")
        return "\n".join(lines)

    def _outputs_lines(self) -> list[str]:
        """The outputs path: what it computes and the memory it holds."""
        itemsize = {"float64": 8, "complex128": 16, "complex64": 8, "int64": 8}
        y_bytes = sum(leaf.size * itemsize.get(getattr(leaf.dtype, "name", ""), 4)
                      for leaf in self.outputs) * self.length
        h_bytes = self.n_state * self.length * itemsize.get(self.dtype, 4)
        ys = ", ".join(f"{leaf.name} {leaf.describe()}" for leaf in self.outputs)
        if all(st.method == "sequential" for st in self.stages):
            path = ("the loop emits them as it goes (one lax.scan of the body): no state is "
                    "stored")
            held = y_bytes
        elif self.boundary_chunk is not None:
            C = self.boundary_chunk
            K = self.length // C
            path = (f"the scan runs over the {K} chunk maps of C = {C} steps and keeps one "
                    f"state per chunk ({_fmt(h_bytes / C)}B), the body recomputes the states "
                    f"inside each chunk and emits the outputs, never all T states "
                    f"({_fmt(h_bytes)}B)")
            held = y_bytes + dict(self.stages[0].estimates).get("memory", 2 * h_bytes) / C
        elif self.chunked is not None:
            C = self.chunked.chunk
            est = dict(self.stages[0].estimates)
            path = (f"the chunkwise form computes them from masked C × C products (C = {C}) "
                    f"and keeps one state per chunk ({_fmt(h_bytes / max(C, 1))}B), never all "
                    f"T states ({_fmt(h_bytes)}B)")
            held = est.get("memory", y_bytes)
        else:
            path = ("the parallel methods hold all T states; the outputs are one batched "
                    f"evaluation of the body on them ({_fmt(h_bytes)}B of states)")
            held = y_bytes + h_bytes
        return [f"outputs: {ys} per step ({_fmt(y_bytes)}B for T = {self.length}); {path}; "
                f"memory of the outputs path about {_fmt(held)}B"]

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


__all__ = ["Plan", "Stage", "Layout", "KIND_ORDER", "boundary_chunk_length"]
