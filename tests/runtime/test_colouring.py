"""Column colouring of sparse "dense" Jacobians, and quasi-DEER's Hutchinson diagonal.

A Jacobian whose pattern is not block-diagonal after a permutation but sparse (Lorenz-96:
``x_i`` reads ``x_{i-2}, x_{i-1}, x_i, x_{i+1}``) is extracted from ``c`` JVPs, one per
colour of a proper column colouring, instead of ``n``.  Results and derivatives must be
those of the sequential loop; the colouring must be proper; the JVP count must drop.
"""

from __future__ import annotations

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import recur
from recur._errors import PlanError
from recur.passes._dependency import jacobian_sparsity
from recur.passes._structure import analyse_structure, column_colouring, is_proper_colouring
from recur.passes._trace import trace_step
from recur.passes._verify import verify
from recur import _coefficients
from recur.runtime import _iterative, _jacobian
from recur.runtime._iterative import solve_nonlinear

from .._steps import loop, structure_of

TOL = dict(rtol=1e-13, atol=1e-13)
D = 12


def lorenz96(h, x, p):
    g = (jnp.roll(h, -1) - jnp.roll(h, 2)) * jnp.roll(h, 1) - h + p["F"]
    return h + 0.01 * g + x


def banded_linear(h, x, p):  # affine, cyclic band: dense, 3 colours
    return p["a"] * h + 0.2 * jnp.roll(h, 1) - 0.1 * jnp.roll(h, -1) + x


def on_attractor(d=D, seed=1, spinup=500):
    rng = np.random.default_rng(seed)
    h = 8.0 + 0.1 * rng.standard_normal(d)
    for _ in range(spinup):
        h = h + 0.01 * ((np.roll(h, -1) - np.roll(h, 2)) * np.roll(h, 1) - h + 8.0)
    assert np.all(np.isfinite(h))
    return jnp.asarray(h)


def shapes(*trees):
    """Plans from shapes only (no Lyapunov run along the loop)."""
    return [jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), t) for t in trees]


def cyclic_band(n, offsets):
    pattern = np.zeros((n, n), bool)
    for i in range(n):
        for o in offsets:
            pattern[i, (i + o) % n] = True
    return pattern


@pytest.fixture(scope="module")
def l96():
    T = 25
    h0 = on_attractor()
    xs = jnp.asarray(1e-3 * np.random.default_rng(2).standard_normal((T, D)))
    p = {"F": jnp.asarray(8.0)}
    return h0, xs, p


# ----------------------------------------------------------------------------- the colouring

@st.composite
def patterns(draw):
    rows = draw(st.integers(1, 24))
    n = draw(st.integers(1, 24))
    density = draw(st.floats(0.0, 0.6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    return rng.random((rows, n)) < density, seed


@given(patterns())
def test_colouring_is_proper_and_reconstructs(drawn):
    pattern, seed = drawn
    colours = column_colouring(pattern)
    n = pattern.shape[1]
    assert colours.shape == (n,) and colours.dtype == np.int64
    c = int(colours.max(initial=-1)) + 1
    assert set(colours.tolist()) == set(range(c))  # 0..c-1, none skipped
    assert is_proper_colouring(pattern, colours)
    # no two columns of a colour share a row (checked directly, not through the helper)
    for j in range(n):
        for k in range(j + 1, n):
            if colours[j] == colours[k]:
                assert not np.any(pattern[:, j] & pattern[:, k])
    assert c >= int(pattern.sum(axis=1).max(initial=0))  # a row's columns all differ
    # c JVPs of any matrix with this pattern give it back exactly (square patterns)
    if pattern.shape[0] == n and n:
        rng = np.random.default_rng(seed)
        J = np.where(pattern, rng.standard_normal((n, n)), 0.0)
        coloured = types.SimpleNamespace(colours=colours, pattern=pattern)
        got = _coefficients.structured_from_jvp(lambda v: jnp.asarray(J) @ v, n, jnp.float64,
                                            coloured)
        assert got.shape == (1, n, n)
        np.testing.assert_array_equal(np.asarray(got[0]), J)
        s = analyse_structure(pattern)
        if s.colours is not None:
            assert s.jacobian == "dense" and s.n_colours < n
            assert is_proper_colouring(pattern, s.colours)


def test_improper_colouring_is_detected():
    pattern = cyclic_band(6, (0, 1))
    assert not is_proper_colouring(pattern, np.zeros(6, np.int64))
    assert is_proper_colouring(pattern, np.arange(6) % 2)


@pytest.mark.parametrize("n", [12, 40])
def test_lorenz96_gets_few_colours(n):
    h0 = on_attractor(n)
    s = structure_of(lambda h, x: lorenz96(h, x, {"F": 8.0}), h0, jnp.zeros((3, n)))
    assert s.jacobian == "dense" and s.colours is not None
    assert s.n_colours == 4  # rows read 4 columns; a cyclic band of width 4: 4 suffice
    assert s.jvps_per_step == 4
    assert is_proper_colouring(s.pattern, s.colours)


def test_no_colouring_when_it_does_not_pay():
    assert analyse_structure(np.ones((5, 5), bool)).colours is None
    assert analyse_structure(np.tril(np.ones((5, 5), bool))).colours is None  # a full row
    assert analyse_structure(cyclic_band(5, (-2, -1, 0, 1))).colours is None  # c = n
    s = analyse_structure(cyclic_band(5, (1,)))  # a cyclic shift: 1 colour
    assert s.jacobian == "dense" and s.n_colours == 1


def test_structure_equality_and_hash_by_value():
    a, b = analyse_structure(cyclic_band(8, (0, 1))), analyse_structure(cyclic_band(8, (0, 1)))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    c = dataclasses.replace(a, colours=None, pattern=None)
    d = dataclasses.replace(a, hutchinson=3)
    assert a != c and a != d and len({a, c, d}) == 3


# ----------------------------------------------------------------------------- the runtime

@pytest.mark.parametrize("method", ["deer", "quasi-deer"])
def test_iterative_with_colouring_agree_with_loop(l96, method):
    h0, xs, p = l96
    ref = loop(lorenz96, h0, xs, p)
    plan = recur.plan(lorenz96, *shapes(h0, xs, p), method=method, **TOL)
    assert plan.stages[0].jacobian == "dense" and plan.stages[0].colours == 4
    hs, info = recur.scan(lorenz96, h0, xs, p, method=method, return_info=True,
                          on_failure="raise", **TOL)
    assert bool(info.converged) and not bool(info.fell_back)
    np.testing.assert_allclose(hs, ref, rtol=0, atol=1e-10)
    if method != "deer":  # the tangent solve is the same for every method (the true J);
        return            # quasi-deer's derivatives are checked with Hutchinson below

    def loss(fn):
        return lambda h0, p: jnp.sum(jnp.sin(fn(h0, p)))
    g = jax.grad(loss(lambda h0, p: recur.scan(lorenz96, h0, xs, p, method=method, **TOL)),
                 argnums=(0, 1))(h0, p)
    g_ref = jax.grad(loss(lambda h0, p: loop(lorenz96, h0, xs, p)), argnums=(0, 1))(h0, p)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def test_windows_with_colouring(l96):
    h0, xs, p = l96
    step = lambda h, x: lorenz96(h, x, p)  # noqa: E731
    s = structure_of(step, h0, xs)
    assert s.colours is not None
    ref = loop(lorenz96, h0, xs, p)
    for kw in (dict(method="quasi-deer", window=8),):  # ELK: same extraction as deer
        zs, info, _ = jax.jit(lambda h0, xs: solve_nonlinear(
            step, h0, xs, structure=s, length=xs.shape[0], **kw, **TOL))(h0, xs)
        assert bool(info.converged), kw
        np.testing.assert_allclose(zs, ref, rtol=0, atol=1e-10)


def test_affine_scan_with_colouring():
    T = 40
    rng = np.random.default_rng(3)
    h0, xs = jnp.asarray(rng.standard_normal(D)), jnp.asarray(rng.standard_normal((T, D)))
    p = {"a": jnp.asarray(rng.uniform(0.3, 0.6, D))}
    plan = recur.plan(banded_linear, *shapes(h0, xs, p), method="scan")
    assert plan.stages[0].jacobian == "dense" and plan.stages[0].colours == 3
    ref = loop(banded_linear, h0, xs, p)
    hs, info = recur.scan(banded_linear, h0, xs, p, method="scan", return_info=True,
                          on_failure="raise")
    np.testing.assert_allclose(hs, ref, rtol=0, atol=1e-12)

    def loss(fn):
        return lambda h0, xs, p: jnp.sum(fn(h0, xs, p) ** 2)
    g = jax.grad(loss(lambda h0, xs, p: recur.scan(banded_linear, h0, xs, p, method="scan")),
                 argnums=(0, 1, 2))(h0, xs, p)
    g_ref = jax.grad(loss(lambda h0, xs, p: loop(banded_linear, h0, xs, p)),
                     argnums=(0, 1, 2))(h0, xs, p)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_jvp_count_drops(l96, monkeypatch):
    """The tangents handed to the step's JVP: c = 4 per step with the colouring, n = 12
    without, for deer's Jacobians, quasi-deer's diagonal, the tangent solve (2 applications
    of the linearised F per colour) and the affine coefficients."""
    h0, xs, p = l96
    step = lambda h, x: lorenz96(h, x, p)  # noqa: E731
    T = xs.shape[0]
    s = structure_of(step, h0, xs)
    plain = dataclasses.replace(s, colours=None, pattern=None)
    seen: list[int] = []
    direct, shifted = _jacobian.tangent_columns, _iterative._shift_per_step

    def spy(make):
        def wrapped(*args):
            per_step = make(*args)

            def counted(U):
                seen.append(int(U.shape[0]))
                return per_step(U)
            return counted
        return wrapped
    monkeypatch.setattr(_jacobian, "tangent_columns", spy(direct))
    monkeypatch.setattr(_iterative, "_shift_per_step", spy(shifted))
    for st_, expected in ((s, 4), (plain, D)):
        for method in ("deer", "quasi-deer"):
            seen.clear()
            jax.make_jaxpr(lambda h: jax.jvp(  # tracing is enough: the counts are static
                lambda h: solve_nonlinear(step, h, xs, method=method, structure=st_,
                                          length=T, **TOL)[0], (h,), (h,)))(h0)
            # the evaluation inside the loop, then the tangent solve
            assert seen and set(seen) == {expected}, (method, seen)
    # the affine coefficients (a linear step)
    lin = lambda h, x: banded_linear(h, x, {"a": 0.5})  # noqa: E731
    sa = structure_of(lin, h0, xs)
    counts: list[int] = []
    real = _coefficients.structure_tangents

    def spy_tangents(*args):
        out = real(*args)
        counts.append(out.shape[0])
        return out
    monkeypatch.setattr(_coefficients, "structure_tangents", spy_tangents)
    from recur.runtime._affine import solve_affine
    jax.make_jaxpr(lambda h: solve_affine(lin, h, xs, sa, T))(h0)
    assert counts == [3]


def test_verification_probes_the_colouring():
    ir = trace_step(lambda h, x: lorenz96(h, x, {"F": 8.0}), jnp.zeros(D), jnp.zeros((3, D)))
    good = analyse_structure(jacobian_sparsity(ir).pattern)
    assert verify(ir, good, affine=False).structure_ok is True
    # a pattern that misses x_{i-2}: its (proper) colouring extracts a wrong Jacobian
    wrong = analyse_structure(cyclic_band(D, (-1, 0, 1)))
    assert wrong.colours is not None
    assert verify(ir, wrong, affine=False).structure_ok is False


def test_explain_and_to_dict(l96):
    h0, xs, p = l96
    plan = recur.plan(lorenz96, *shapes(h0, xs, p), method="deer")
    st_ = plan.stages[0]
    assert st_.jacobian == "dense"
    assert "dense (sparse pattern, 4 colours: 4 JVPs per step instead of 12)" in plan.explain()
    assert dict(st_.estimates)["JVPs per step"] == 4
    d = plan.to_dict()["stages"][0]
    assert d["jacobian"] == "dense" and d["colours"] == 4
    assert "4 colours" in d["jacobian_note"]
    assert "column colouring" in plan.explain_passes()


def test_extraction_from_colours_respects_structural_zeros(monkeypatch):
    """J and diag(J) from the colour JVPs, where the diagonal is structurally zero in some
    rows (there ``(J e_{colour(i)})_i`` is another column's entry, not ``J_ii``), also
    when the diagonal is computed in chunks."""
    rng = np.random.default_rng(0)
    T, n = 7, 9
    pattern = cyclic_band(n, (-1, 1))
    pattern[0, 0] = True
    s = analyse_structure(pattern)
    assert s.colours is not None and s.n_colours == 3
    J = jnp.asarray(np.where(pattern, rng.standard_normal((T, n, n)), 0.0))
    def per_step(U):  # time-major columns: (T, n, B)
        return jnp.einsum("tij,bj->tib", J, U)
    E = jnp.asarray(_coefficients.structure_tangents(s, n, jnp.float64))
    assert E.shape == (3, n)
    np.testing.assert_array_equal(_coefficients.BlockForm(s, n).from_columns(per_step(E))[:, 0], J)
    for chunk in (1 << 24, T * n):  # all colours at once, or one per lax.scan step
        monkeypatch.setattr(_jacobian, "_DIAG_CHUNK_ELEMENTS", chunk)
        diag = _jacobian.diagonal_from_columns(per_step, np.asarray(E), T, n, jnp.float64,
                                       mask=_jacobian.diagonal_mask(s))
        np.testing.assert_array_equal(diag, jnp.diagonal(J, axis1=1, axis2=2))


# ----------------------------------------------------------------------------- Hutchinson

def test_hutchinson_quasi_deer_converges_to_the_loop(l96):
    h0, xs, p = l96
    ref = loop(lorenz96, h0, xs, p)
    opts = dict(method="quasi-deer", diagonal="hutchinson", probes=2, **TOL)
    plan = recur.plan(lorenz96, *shapes(h0, xs, p), **opts)
    assert "Hutchinson" in plan.explain() and dict(plan.stages[0].estimates)["JVPs per step"] == 2
    assert plan.stage_data[0].structure.hutchinson == 2
    hs, info = recur.scan(lorenz96, h0, xs, p, return_info=True, on_failure="raise", **opts)
    assert bool(info.converged) and not bool(info.fell_back)
    np.testing.assert_allclose(hs, ref, rtol=0, atol=1e-10)
    # derivatives stay exact (the tangent solve uses the true Jacobians)
    g = jax.grad(lambda h0: jnp.sum(recur.scan(lorenz96, h0, xs, p, **opts) ** 2))(h0)
    g_ref = jax.grad(lambda h0: jnp.sum(loop(lorenz96, h0, xs, p) ** 2))(h0)
    np.testing.assert_allclose(g, g_ref, rtol=1e-9, atol=1e-9)


def test_hutchinson_estimate():
    """Unbiased and deterministic; exact for a diagonal J; not exact otherwise."""
    rng = np.random.default_rng(0)
    T, n = 6, 5
    J = jnp.asarray(rng.standard_normal((T, n, n)))
    jvp_all = lambda V: jnp.einsum("tij,tj->ti", J, V)  # noqa: E731
    diag = jnp.diagonal(J, axis1=1, axis2=2)
    est = jax.jit(lambda probes: _jacobian.diagonal_hutchinson(jvp_all, probes, T, n, jnp.float64),
                  static_argnums=0)
    one = est(3)
    np.testing.assert_array_equal(one, est(3))
    assert float(jnp.max(jnp.abs(one - diag))) > 1e-3
    many = est(1000)  # error ~ sqrt(sum_j≠i J_ij^2 / 1000) ~ 0.06 per entry
    assert float(jnp.max(jnp.abs(many - diag))) < 0.3
    Jd = jnp.asarray(rng.standard_normal((T, n)))
    exact = jax.jit(lambda: _jacobian.diagonal_hutchinson(lambda V: Jd * V, 2, T, n, jnp.float64))()
    np.testing.assert_allclose(exact, Jd, rtol=1e-15, atol=0)


def test_hutchinson_options(l96):
    h0, xs, p = l96
    with pytest.raises(PlanError, match="probes"):
        recur.plan(lorenz96, *shapes(h0, xs, p), method="quasi-deer", probes=4)
    with pytest.raises(PlanError, match="diagonal"):
        recur.plan(lorenz96, *shapes(h0, xs, p), method="quasi-deer",
                   diagonal="stochastic")
    with pytest.raises(PlanError, match="probes"):
        recur.plan(lorenz96, *shapes(h0, xs, p), method="quasi-deer",
                   diagonal="hutchinson", probes=0)
    # as many probes as colours: the exact diagonal is no dearer, and is used
    plan = recur.plan(lorenz96, *shapes(h0, xs, p), method="quasi-deer",
                      diagonal="hutchinson", probes=4)
    assert plan.stage_data[0].structure.hutchinson == 0
    assert any("not used" in note for note in plan.notes)
    plan = recur.plan(lorenz96, *shapes(h0, xs, p), method="deer", diagonal="hutchinson")
    assert plan.stage_data[0].structure.hutchinson == 0
    assert any("quasi-deer only" in note for note in plan.notes)


def test_program_key_sees_the_structure(l96):
    from recur.runtime._program import program_key
    h0, xs, p = l96
    plan = recur.plan(lorenz96, *shapes(h0, xs, p), method="quasi-deer")
    leaves = ([h0], [xs], [p["F"]], [])
    changed = dataclasses.replace(plan, stage_data=tuple(
        dataclasses.replace(d, structure=dataclasses.replace(d.structure, hutchinson=2))
        for d in plan.stage_data))
    assert program_key(plan, leaves, False) == program_key(plan, leaves, False)
    assert program_key(plan, leaves, False) != program_key(changed, leaves, False)
