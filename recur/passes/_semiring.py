r"""Semiring pass: is a stage that is not affine linear over a semiring?

For each algebra of ``recur/_semiring_algebra.py`` in turn (log-sum-exp/+, max/+, min/+, max/×,
min/×, normalised +/×) the step's jaxpr is read structurally (``_semiring_analysis.analyse``):
which values are ``A ⊗ h (⊕ b)`` in that algebra, through which primitives; the first
algebra in which every new state of the stage is linear, affine or normalised linear is the
claim.  A stage that qualifies in none says what broke it in the algebra it came closest
to (the one that applied the most ``⊕`` to linear values): ``logsumexp`` of ``tanh(α)``,
coefficients that read the state.

Where it applies: a stage of whole float state leaves (the modes replace values leaf by
leaf); ``max/×`` and ``min/×`` only on a diagonal stage.

Verification
------------
A claim is used only once value probes confirm it, at the actual values when they are
known and at random points (the points of ``_verify.py``), with the coefficients extracted
by the runtime's own code (``_semiring_coefficients.extract``):

* the extracted map reproduces the step: ``f(u) = A ⊗ u ⊕ b``;
* for the ``+`` algebras, linearity in the algebra itself:
  ``f(a ⊗ u ⊕ c ⊗ v) = a ⊗ f(u) ⊕ c ⊗ f(v)`` with ``a ⊕ c = 1̄`` (for an affine step this is
  the analogue of ``f(a u + (1-a) v) = a f(u) + (1-a) f(v)``; ``a = log 0.37``,
  ``c = log 0.63`` for log-sum-exp);
* a normalised step: ``f(λ ⊗ u) = f(u)`` for a ⊗-scalar per block, and ``f(u) ⊘ (A ⊗ u)``
  constant on every block (``f(u)`` is the linear part up to one scalar per block).

A probe whose values are not finite is inconclusive; a claim no probe confirmed is not
used, and neither is one a probe contradicted.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .._dtypes import is_complex, is_inexact
from .._ir import ElementView, StepIR, Structure
from .._semiring_algebra import ALGEBRAS
from .._semiring_analysis import Claim, analyse, evaluator
from .._semiring_coefficients import apply_map, block_layout, extract
from ._verify import Values, _close, _points, _Probe


@dataclasses.dataclass(frozen=True)
class SemiringFacts:
    """``claim`` (or None) and, when None, ``why`` not (``algebra``: the closest one)."""

    claim: Claim | None
    why: str = ""
    algebra: str = ""
    checked: bool | None = None  # the value probes: True, False, None (inconclusive)
    notes: tuple[str, ...] = ()

    def text(self) -> str:
        if self.claim is not None:
            probe = {True: "confirmed by value probes", False: "a value probe disagreed",
                     None: "not confirmed by a value probe"}[self.checked]
            return f"{self.claim.describe()} ({probe})"
        if self.algebra:
            return f"not linear over {ALGEBRAS[self.algebra].name}: {self.why}"
        return self.why

    @property
    def usable(self) -> bool:
        return self.claim is not None and self.checked is True


def _leaves(ir: StepIR, elements: np.ndarray):
    """The stage's leaves, or a reason it is not made of whole float leaves."""
    leaves = []
    for i, (leaf, off) in enumerate(zip(ir.state, ir.offsets)):
        inside = np.count_nonzero((elements >= off) & (elements < off + leaf.size))
        if not inside:
            continue
        if inside != leaf.size:
            return None, f"the stage holds part of {leaf.name} only"
        if not is_inexact(leaf.dtype) or is_complex(leaf.dtype):
            return None, f"{leaf.name} is not a real float leaf"
        leaves.append(i)
    return leaves, ""


def analyse_semiring(ir: StepIR, elements: np.ndarray, structure: Structure) -> SemiringFacts:
    """The claim for the stage of ``elements`` (module docstring), not yet verified."""
    leaves, why = _leaves(ir, elements)
    if leaves is None:
        return SemiringFacts(None, why)
    n_other = len(ir.inputs) + len(ir.params)
    best = ("", "", (-1, -1))
    diagonal = structure.jacobian in ("diagonal", "zero")
    for alg in ALGEBRAS.values():
        claim, why, progress = analyse(ir.jaxpr, len(ir.state), leaves, n_other, alg)
        if claim is not None and not alg.dense and not diagonal:
            claim, why = None, (f"with ⊗ = × a {structure.jacobian} coefficient matrix is "
                                "linear only for nonnegative states (elementwise steps only)")
        if claim is not None:
            return SemiringFacts(claim, algebra=alg.key)
        if progress > best[2]:
            best = (alg.key, why, progress)
    if best[2] <= (0, 0):
        return SemiringFacts(None, "no ⊕ (log-sum-exp, max, min, or a normalised sum) of the "
                                   "state")
    return SemiringFacts(None, best[1], best[0])


# ----------------------------------------------------------------------------- probes

def _modes(ir: StepIR, probe: _Probe, view: ElementView, leaves, claim: Claim):
    closed = probe.step.closed
    n_other = len(ir.inputs) + len(ir.params)

    def flat(mode):
        run = evaluator(closed, len(ir.state), leaves, n_other, claim, mode)

        def f(z, _x):
            out, coefs = run(view.scatter(z, probe.h), probe.x, probe.p)
            return view.gather(out), coefs
        return f

    return flat("linear"), (flat("offset") if claim.affine else None)


def _blocks_of(structure: Structure, n: int) -> np.ndarray:
    if structure.jacobian in ("diagonal", "zero"):
        return np.arange(n)[:, None]
    return block_layout(structure, n)


def verify_semiring(ir: StepIR, elements: np.ndarray, structure: Structure, claim: Claim,
                    values: Values | None = None, seed: int = 0,
                    needed: int = 2) -> tuple[bool | None, tuple[str, ...]]:
    """``(confirmed, notes)`` for ``claim`` (module docstring)."""
    if not ir.has_jvp:
        return None, ("not probed: the step cannot be differentiated in forward mode",)
    leaves, _ = _leaves(ir, elements)
    rng = np.random.default_rng(seed)
    view = ElementView(ir, elements)
    n, dtype = view.n, view.dtype
    alg = claim.alg
    eps = max(float(jnp.finfo(s.dtype).eps)
              for s in (*ir.state, *ir.inputs, *ir.params) if is_inexact(s.dtype))
    tol = min(1e3 * max(eps, float(jnp.finfo(dtype).eps)), 0.1)
    blocks = _blocks_of(structure, n)
    ok: bool | None = None
    seen = 0
    failed = ""
    with jax.ensure_compile_time_eval(), np.errstate(invalid="ignore"):
        probe = _Probe(ir, view, rng)
        for h, x, p, u, v in _points(probe, values, rng, n, dtype):
            if seen >= needed:
                break
            probe.at(h, x, p)
            f_lin, f_off = _modes(ir, probe, view, leaves, claim)
            try:
                A, b, _ = extract(f_lin, f_off, None, n, dtype, structure, claim)
                checks = _checks(alg, claim, probe, A, b, u, v, structure, n, blocks, rng,
                                 dtype, tol)
            except Exception as exc:  # noqa: BLE001 - a probe that cannot run decides nothing
                failed = f"{type(exc).__name__}: {exc}"
                continue
            if any(c is None for _, c in checks):
                continue
            seen += 1
            bad = [name for name, c in checks if not c]
            if bad:
                failed = ", ".join(bad)
            ok = (not bad) if ok is None else (ok and not bad)
    notes = ()
    if ok is False:
        notes = (f"the {alg.name} claim failed a value probe ({failed})",)
    elif ok is None:
        notes = (f"the {alg.name} claim could not be confirmed (non-finite values at every "
                 f"probe{'; ' + failed if failed else ''})",)
    return ok, notes


def _checks(alg, claim, probe, A, b, u, v, structure, n, blocks, rng, dtype, tol):
    """``[(name, True/False/None)]`` at one probe point."""
    def close(x, y):
        x, y = np.asarray(x), np.asarray(y)
        both_zero = (x == alg.zero) & (y == alg.zero)
        x, y = np.where(both_zero, 0, x), np.where(both_zero, 0, y)
        scale = float(np.max(np.abs(np.where(np.isfinite(y), y, 0)), initial=0.0))
        return _close(x, y, scale, tol)

    out = []
    fu = probe(u)
    Au = apply_map(alg, A, u, structure, n)
    if not claim.normalised:
        out.append(("f(u) = A ⊗ u ⊕ b", close(fu, Au if b is None else alg.oplus(Au, b))))
        if alg.times == "add":
            a, c = {"lse": (np.log(0.37), np.log(0.63)), "max": (0.0, -0.7),
                    "min": (0.0, 0.7)}[alg.plus]
            a, c = jnp.asarray(a, dtype), jnp.asarray(c, dtype)
            lhs = probe(alg.oplus(alg.otimes(a, u), alg.otimes(c, v)))
            rhs = alg.oplus(alg.otimes(a, fu), alg.otimes(c, probe(v)))
            out.append(("f(a ⊗ u ⊕ c ⊗ v) = a ⊗ f(u) ⊕ c ⊗ f(v)", close(lhs, rhs)))
        return out
    lam = rng.uniform(0.5, 2.0, blocks.shape[0])
    if alg.times == "add":
        lam = np.log(lam) * 3.0
    per = np.zeros(n)
    for row, value in zip(blocks, lam):
        per[row[row >= 0]] = value
    scaled = alg.otimes(jnp.asarray(per, dtype), u)
    out.append(("f(λ ⊗ u) = f(u)", close(probe(scaled), fu)))
    ratio = np.asarray(alg.divide(fu, Au))
    same = True
    for row in blocks:
        r = ratio[row[row >= 0]]
        r = r[np.isfinite(r)]
        if r.size > 1 and not np.allclose(r, r[0], rtol=tol, atol=tol * (1 + np.max(np.abs(r)))):
            same = False
    out.append(("f(u) ⊘ (A ⊗ u) constant per block", same))
    return out


def print_semiring(facts_by_stage) -> str:
    """The pass's printable output: per stage, the claim or why not."""
    lines = []
    for index, facts in facts_by_stage:
        if facts is None:
            continue
        lines.append(f"stage {index}: {facts.text()}")
        lines += [f"  {note}" for note in facts.notes]
    return "\n".join(lines) or "(no stage that is not affine)"


__all__ = ["SemiringFacts", "analyse_semiring", "verify_semiring", "print_semiring"]
