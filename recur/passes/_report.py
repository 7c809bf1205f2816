"""What a plan says about itself: evidence, estimates and the passes' printable output.

Pure functions from the facts lowering found to text and numbers; nothing here decides.
"""

from __future__ import annotations

import numpy as np

from .. import _methods
from .._ir import StepIR, Structure
from ._cost import fmt_seconds
from ._dependency import Sparsity
from ._verify import Verification


def jacobian_note(structure: Structure, n: int) -> str:
    if structure.colours is None:
        return ""
    c = structure.n_colours
    return (f"sparse pattern, {c} colour{'s' if c != 1 else ''}: {c} JVP{'s' if c != 1 else ''}"
            f" per step instead of {n}")


def evidence(kind: str, reasons, checked: Verification, staged: bool, exact: bool,
             unconfirmed: str = "") -> str:
    if exact:
        return ("integer, boolean or key state: computed exactly by the loop (never rounded "
                "through floats)")
    given = " given the earlier stages" if staged else ""
    if kind in ("linear", "affine"):
        probe = ", confirmed by a value probe" if checked.affine_ok else \
            " (not probed: verify=False)"
        if kind == "linear":
            return f"the new state is M(x) h with no offset{given} (structural, on the jaxpr)" \
                + probe
        return f"the Jacobian does not depend on h{given} (structural, on the jaxpr)" + probe
    if unconfirmed:
        return unconfirmed
    return "not affine in h: " + "; ".join(f"{name} through {r}" for name, r in reasons)


def diagonal_jvps(structure: Structure) -> int:
    """JVPs per step of the exact diagonal of the Jacobian in this structure."""
    if structure.jacobian == "zero":
        return 0
    if structure.jacobian == "diagonal":
        return 1
    return structure.jvps_per_step


def coefficient_elements(structure: Structure, n: int) -> int:
    """Numbers per step of the structure's ``A_t``: 0 (zero), ``n`` (diagonal), ``m k^2``."""
    if structure.jacobian == "zero":
        return 0
    if structure.jacobian == "diagonal":
        return n
    m, k = structure.blocks.shape if structure.blocks.size else (n, 1)
    return m * k * k


def estimates(method: str, structure: Structure, T: int, n: int, itemsize: int,
              user_jacobian: bool = False):
    """``(name, value)`` pairs: work, depth, memory, and for iterative methods ``Ã``, the
    expected iterations and JVPs per step."""
    m = _methods.get(method)
    if m.family == "loop":
        return (("work", T * max(n, 1)), ("depth", T), ("memory", T * n * itemsize))
    k = structure.blocks.shape[1] if structure.blocks.size else 1
    coeff = coefficient_elements(structure, n)
    scan = {"JVPs per step": structure.jvps_per_step,
            "work": 2 * T * (coeff * max(k, 1) + n),
            "depth": int(np.ceil(np.log2(max(T, 2)))) * 2,
            "memory": T * (coeff + 2 * n) * itemsize}
    if m.family in ("scan", "semiring"):
        return tuple(scan.items())
    iters = min(m.expected_iterations, max(T, 1))
    memory = scan["memory"] if m.linearisation == "jacobian" else T * 3 * n * itemsize
    a_tilde, jvps = m.a_tilde, scan["JVPs per step"]
    if m.linearisation in ("identity", "zero"):
        jvps = 0
    elif m.linearisation == "diagonal":
        jvps = 0 if user_jacobian else diagonal_jvps(structure)
        if structure.hutchinson and method == "quasi-deer" and not user_jacobian:
            a_tilde = (f"Hutchinson estimate of the diagonal of the Jacobian "
                       f"({structure.hutchinson} Rademacher probes)")
            jvps = structure.hutchinson
    return (("Ã", a_tilde), ("expected iterations", iters), ("JVPs per step", jvps),
            ("work", (iters + 1) * scan["work"]), ("depth", (iters + 1) * scan["depth"]),
            ("memory", memory))


def leaf_reads(ir: StepIR, pattern: np.ndarray):
    """Per state leaf the leaves it reads, and the leaf graph's weighted edges."""
    offs = ir.offsets
    reads, edges = [], []
    for lv, ov in zip(ir.state, offs):
        names = []
        for lu, ou in zip(ir.state, offs):
            w = int(pattern[ov:ov + lv.size, ou:ou + lu.size].sum())
            if w:
                names.append(lu.name)
                edges.append((lu.name, lv.name, w))
        reads.append((lv.name, tuple(names)))
    return tuple(reads), tuple(edges)


def print_pattern(ir: StepIR, sp: Sparsity) -> str:
    n = ir.n_state
    lines = [f"{n} state elements, {sp.nnz} nonzeros in the Jacobian pattern"
             + ("" if sp.tangent is None else
                f" (values read {sp.primal.nnz}, derivative reads {sp.tangent.nnz})")]
    if n <= 32:
        pattern = sp.pattern.toarray()
        for i in range(n):
            row = "".join("x" if pattern[i, j] else "." for j in range(n))
            lines.append(f"  {row}  {ir.element_name(i)}")
    return "\n".join(lines)


def print_structures(data) -> str:
    return "\n".join(
        f"stage {i}: {len(d.elements)} elements, jacobian {d.structure.jacobian}, "
        f"{d.structure.n_blocks} blocks of sizes {sorted(set(d.structure.block_sizes))}, "
        f"{d.structure.n_scc} strongly connected components"
        + (", exact (integer, boolean or key)" if d.exact else "")
        + (f", column colouring of the sparse pattern: {d.structure.n_colours} colours "
           f"(JVPs per step) instead of {len(d.elements)}"
           if d.structure.colours is not None else "")
        for i, d in enumerate(data))


def print_costs(source: str, flops: float, rows) -> str:
    return (f"predicted times ({source}; {flops:.0f} flops per step)\n"
            + "\n".join(f"stage {i}: " + ", ".join(f"{m} {fmt_seconds(t)}" for m, t in costs)
                        for i, costs in rows))


__all__ = ["jacobian_note", "evidence", "estimates", "coefficient_elements", "diagonal_jvps",
           "leaf_reads", "print_pattern", "print_structures", "print_costs"]
