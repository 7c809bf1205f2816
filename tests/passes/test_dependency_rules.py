"""Every rule of the dependency pass against ``jax.jacfwd``, over the primitive's parameters.

Soundness everywhere: no nonzero of the true Jacobian (at random points) is outside the
pattern.  Precision where the rule is meant to be exact (elementwise, movement, known
indices, sums, dot_general, convolutions with a known kernel): the pattern is no wider than
the union of the Jacobian's nonzeros, so a rule that silently went dense is noticed.
"""

from __future__ import annotations

import itertools
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from jax import lax

import recur
from recur import _jax_adapter as jx
from recur.passes._dependency import jacobian_sparsity
from recur.passes._trace import trace_step

from ._harness import Case, check, output_rows

small = st.integers(1, 3)
shapes = st.lists(small, min_size=1, max_size=3).map(tuple)
seeds = st.integers(0, 2 ** 16)


def _valid(fn, *shapes_):
    """Whether ``fn`` accepts operands of ``shapes_`` (hypothesis draws some illegal ones)."""
    try:
        jax.eval_shape(fn, *[jax.ShapeDtypeStruct(s, jnp.float64) for s in shapes_])
    except Exception:  # noqa: BLE001 - any refusal of JAX's shape rules
        return False
    return True


def _nonempty(fn, *shapes_):
    """``fn`` accepts operands of ``shapes_`` and returns something non-empty."""
    if not _valid(fn, *shapes_):
        return False
    out = jax.eval_shape(fn, *[jax.ShapeDtypeStruct(s, jnp.float64) for s in shapes_])
    return all(o.size > 0 for o in jax.tree_util.tree_leaves(out))


def _const(rng, shape, zeros=0.4):
    """A known (closed-over) array with some exact zeros."""
    return np.where(rng.random(shape) < zeros, 0.0, rng.standard_normal(shape))


# --- elementwise ---------------------------------------------------------------------------

UNARY = {"sin": jnp.sin, "exp": jnp.exp, "tanh": jnp.tanh, "logistic": jax.nn.sigmoid,
         "square": jnp.square, "sqrt": lambda a: jnp.sqrt(a * a + 1.0), "neg": jnp.negative,
         "reduce_precision": lambda a: lax.reduce_precision(a, 8, 20),
         "integer_pow": lambda a: a ** 3, "atan2": lambda a: jnp.arctan2(a, 2.0),
         "erf": jax.scipy.special.erf, "log1p": lambda a: jnp.log1p(a * a)}


@given(st.sampled_from(sorted(UNARY)), shapes)
def test_elementwise_unary(name, shape):
    check(Case(UNARY[name], [shape]), exact=True)


@given(st.sampled_from(["add", "sub", "mul", "div", "max", "pow", "atan2", "rem"]), shapes,
       st.lists(st.booleans(), min_size=3, max_size=3), st.integers(0, 2), st.booleans())
def test_elementwise_binary_broadcasting(op, shape, squash, drop, free_rhs):
    """Operands of broadcast-compatible shapes (size-1 and missing leading axes)."""
    other = tuple(1 if s else d for s, d in zip(squash, shape))[min(drop, len(shape)):]
    fns = {"add": jnp.add, "sub": jnp.subtract, "mul": jnp.multiply,
           "div": lambda a, b: a / (b * b + 1.0), "max": jnp.maximum,
           "pow": lambda a, b: jnp.abs(a) ** b + 0.0 * a, "atan2": jnp.arctan2,
           "rem": lambda a, b: jnp.remainder(a, b * b + 1.0)}
    fn = fns[op]
    if free_rhs:
        case = Case(lambda a, x: fn(a, x), [shape], lambda rng: rng.standard_normal(other))
    else:
        case = Case(fn, [shape, other])
    check(case, exact=op not in ("max", "rem"))  # rem's slope in b is 0 for |a| < |b|


@given(shapes, st.floats(-1, 0), st.floats(0, 1))
def test_clamp_is_sound(shape, lo, hi):
    check(Case(lambda a: lax.clamp(lo, a, hi), [shape]), exact=False)


def test_select_with_a_known_predicate_is_exact():
    mask = np.array([[True, False, True], [False, False, True]])
    check(Case(lambda a, b: jnp.where(mask, a, b), [(2, 3), (2, 3)]), exact=True)
    check(Case(lambda a, b: jnp.where(mask, a, b[0]), [(2, 3), (3,)]), exact=True)


@given(shapes, st.sampled_from(["input", "state"]))
def test_select_with_an_unknown_predicate_is_sound(shape, source):
    if source == "input":
        case = Case(lambda a, b, x: jnp.where(x > 0, a, b), [shape, shape],
                    lambda rng: rng.standard_normal(shape))
    else:
        case = Case(lambda a, b: jnp.where(a > b, a, 2 * b), [shape, shape])
    check(case, exact=False)


def test_optimization_barrier_keeps_operands_apart():
    case = Case(lambda a, b: lax.optimization_barrier((a, b[0])), [(3,), (2,)])
    check(case, exact=True)


# --- data movement ---------------------------------------------------------------------------

@st.composite
def reshapes(draw):
    shape = draw(shapes)
    perm = draw(st.permutations(range(len(shape))))
    size = int(np.prod(shape))
    new = draw(st.sampled_from([(size,), tuple(reversed(shape)), tuple(shape[i] for i in perm),
                                (1, size), (size, 1)]))
    return shape, tuple(perm), new, draw(st.sampled_from(["lax", "F", "ravelF", "flatT"]))


@given(reshapes())
def test_reshape_reads_in_its_dimensions_order(spec):
    shape, perm, new, how = spec
    fns = {"lax": lambda a: lax.reshape(a, new, dimensions=perm),
           "F": lambda a: jnp.reshape(a, new, order="F"),
           "ravelF": lambda a: a.ravel(order="F"),
           "flatT": lambda a: jnp.transpose(a, perm).flatten()}
    check(Case(fns[how], [shape]), exact=True)


def test_reshape_order_f_regression():
    """The audit's case: ``ravel(order="F")[1]`` of a 2x2 is element (1, 0)."""
    case = Case(lambda a: a.ravel(order="F")[1], [(2, 2)])
    assert output_rows(case, check(case, exact=True)).tolist() == [[False, False, True, False]]


@given(shapes, st.data())
def test_transpose_and_rev(shape, data):
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    dims = tuple(data.draw(st.sets(st.integers(0, len(shape) - 1))))
    check(Case(lambda a: lax.rev(jnp.transpose(a, perm), dims), [shape]), exact=True)


@given(shapes, st.data())
def test_squeeze_and_expand_dims(shape, data):
    ones = tuple(i for i, s in enumerate(shape) if s == 1)
    sq = tuple(data.draw(st.sets(st.sampled_from(ones)))) if ones else ()
    where = data.draw(st.integers(0, len(shape) - len(sq)))
    check(Case(lambda a: jnp.expand_dims(lax.squeeze(a, sq), where), [shape]), exact=True)


@given(shapes, st.data())
def test_broadcast_in_dim(shape, data):
    rank = len(shape) + data.draw(st.integers(0, 2))
    dims = tuple(sorted(data.draw(st.sets(st.integers(0, rank - 1), min_size=len(shape),
                                          max_size=len(shape)))))
    out = [data.draw(small) for _ in range(rank)]
    operand = tuple(1 if data.draw(st.booleans()) else out[d] for d in dims)
    check(Case(lambda a: lax.broadcast_in_dim(a, tuple(out), dims), [operand]), exact=True)


@given(shapes, st.data())
def test_slice_with_strides(shape, data):
    starts, limits, strides = [], [], []
    for s in shape:
        lo = data.draw(st.integers(0, s - 1))
        starts.append(lo)
        limits.append(data.draw(st.integers(lo + 1, s)))
        strides.append(data.draw(st.integers(1, 2)))
    check(Case(lambda a: lax.slice(a, starts, limits, strides), [shape]), exact=True)


@given(shapes, st.data(), st.sampled_from(["zero", "literal", "state", "input"]))
def test_pad_low_high_negative_interior(shape, data, value):
    config = [(data.draw(st.integers(-2, 2)), data.draw(st.integers(-2, 2)),
               data.draw(st.integers(0, 2))) for _ in shape]
    fns = {"zero": lambda a: lax.pad(a, 0.0, config),
           "literal": lambda a: lax.pad(a, 1.5, config),
           "state": lambda a, v: lax.pad(a, v, config),
           "input": lambda a, x: lax.pad(a, x, config)}
    ops = [shape, ()] if value == "state" else [shape]
    assume(_nonempty(fns[value], *(ops if value != "input" else [shape, ()])))
    sampler = (lambda rng: rng.standard_normal()) if value == "input" else None
    check(Case(fns[value], ops, sampler), exact=True)


@given(shapes, st.data())
def test_concatenate(shape, data):
    axis = data.draw(st.integers(0, len(shape) - 1))
    sizes = [data.draw(small) for _ in range(data.draw(st.integers(2, 3)))]
    ops = [shape[:axis] + (s,) + shape[axis + 1:] for s in sizes]
    check(Case(lambda *a: lax.concatenate(a, axis), ops), exact=True)


@given(shapes, st.data())
def test_split(shape, data):
    axis = data.draw(st.integers(0, len(shape) - 1))
    sizes = [data.draw(small) for _ in range(data.draw(st.integers(1, 3)))]
    whole = shape[:axis] + (sum(sizes),) + shape[axis + 1:]
    check(Case(lambda a: lax.split(a, sizes, axis), [whole]), exact=True)


@given(shapes, st.data(), st.sampled_from(["stack", "unstack", "tile"]))
def test_stack_unstack_tile(shape, data, which):
    if which == "stack":
        axis = data.draw(st.integers(0, len(shape)))
        check(Case(lambda *a: jnp.stack(a, axis), [shape] * data.draw(small)), exact=True)
    elif which == "unstack":
        axis = data.draw(st.integers(0, len(shape) - 1))
        check(Case(lambda a: jnp.unstack(a, axis=axis), [shape]), exact=True)
    else:
        reps = tuple(data.draw(small) for _ in range(data.draw(st.integers(len(shape), 3))))
        check(Case(lambda a: jnp.tile(a, reps), [shape]), exact=True)


def test_concatenate_with_a_state_free_operand():
    check(Case(lambda a: jnp.concatenate([a, jnp.ones((1, 2)), a], 0), [(2, 2)]), exact=True)


# --- indexing ---------------------------------------------------------------------------

@given(st.sampled_from(["rows", "cols", "pairs", "fill", "clip", "negative"]), seeds)
def test_gather_at_known_indices(form, seed):
    rng = np.random.default_rng(seed)
    idx = rng.integers(-4, 6, size=4)
    jdx = rng.integers(0, 3, size=4)
    fns = {"rows": lambda a: a[np.clip(idx, 0, 3)],
           "cols": lambda a: a[:, jdx],
           "pairs": lambda a: a[np.clip(idx, 0, 3), jdx],
           "fill": lambda a: a.at[idx].get(mode="fill", fill_value=0.5),
           "clip": lambda a: a.at[idx, jdx].get(mode="clip"),
           "negative": lambda a: a[np.clip(idx, -4, 3)]}
    check(Case(fns[form], [(4, 3)]), exact=True)


def test_gather_at_unknown_indices_is_sound():
    check(Case(lambda a, x: a[x], [(4, 3)], lambda rng: rng.integers(-1, 5, size=2)),
          exact=False, points=4)


@given(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 2)), min_size=1, max_size=2),
       st.booleans())
def test_dynamic_slice_and_update_at_unknown_starts(dims, update):
    """Every start (clamped by XLA) is drawn once: the union of the Jacobians over all of
    them is exactly what the rule may claim."""
    inner = tuple(s for s, _ in dims)
    outer = tuple(s + m for s, m in dims)
    starts = list(itertools.product(*[range(-1, m + 2) for _, m in dims]))
    draws = itertools.cycle(starts)
    sampler = lambda rng: np.asarray(next(draws))  # noqa: E731
    if update:
        case = Case(lambda a, u, x: lax.dynamic_update_slice(a, u, tuple(x)), [outer, inner],
                    sampler)
    else:
        case = Case(lambda a, x: lax.dynamic_slice(a, tuple(x), inner), [outer], sampler)
    check(case, exact=True, points=len(starts))


def test_gather_at_state_dependent_indices_is_sound():
    check(Case(lambda a: a[jnp.argmax(a)] * a, [(4,)]), exact=False)


@given(shapes, st.data())
def test_dynamic_slice_and_update_at_known_indices(shape, data):
    starts = [data.draw(st.integers(-2, s + 1)) for s in shape]  # clamped into range
    sizes = [data.draw(st.integers(1, s)) for s in shape]
    check(Case(lambda a: lax.dynamic_slice(a, starts, sizes), [shape]), exact=True)
    check(Case(lambda a, u: lax.dynamic_update_slice(a, u, starts), [shape, tuple(sizes)]),
          exact=True)


@given(st.sampled_from(["set", "add", "mul", "min", "max"]),
       st.sampled_from(["drop", "clip", "promise_in_bounds"]),
       st.booleans(), st.sampled_from(["state", "literal", "input"]), seeds)
def test_scatter_at_known_indices(op, mode, duplicates, updates, seed):
    # jax 0.10.2: the JVP of scatter-min/max with mode="clip" gathers at the unclamped
    # indices and divides by a zero count (NaN); its derivative is no reference there
    assume(not (op in ("min", "max") and mode == "clip"))
    rng = np.random.default_rng(seed)
    high = 6 if mode == "drop" else 4  # clipped out-of-range indices would collide
    idx = rng.integers(0, high, size=3)
    if duplicates:
        idx[1] = idx[0]
    else:
        idx = rng.permutation(high)[:3]

    # jax differentiates scatter-mul only at indices promised unique
    assume(not (op == "mul" and duplicates))

    def at(a, u):
        return getattr(a.at[idx], op)(u, mode=mode, unique_indices=not duplicates)

    if updates == "state":
        case = Case(at, [(4, 2), (3, 2)])
    elif updates == "literal":
        case = Case(lambda a: at(a, 2.0), [(4, 2)])
    else:
        case = Case(at, [(4, 2)], lambda rng: rng.standard_normal((3, 2)))
    # a replace with duplicates keeps one of them; min/max derive through the winner only
    exact = op in ("add", "mul") or (op == "set" and not duplicates)
    check(case, exact=exact)


def test_scatter_apply_reads_the_operand():
    """``.at[i].apply(f)`` binds ``scatter`` with a combiner and a dummy update: the
    element it changes still reads the operand (checked on values: it has no JVP)."""
    pattern = check(Case(lambda a: a.at[1].apply(jnp.sin), [(3,)]), exact=True, perturb=True)
    assert pattern[4, 1]


def test_scatter_at_unknown_indices_is_sound():
    case = Case(lambda a, u, x: a.at[x].add(u), [(4,), (2,)],
                lambda rng: rng.integers(0, 4, size=2))
    check(case, exact=False, points=4)


# --- reductions, scans, sorts ------------------------------------------------------------------

@given(st.sampled_from(["sum", "prod", "max", "min", "argmax", "argmin"]), shapes, st.data())
def test_reductions_over_axes(op, shape, data):
    axes = tuple(sorted(data.draw(st.sets(st.integers(0, len(shape) - 1), min_size=1))))
    if op in ("argmax", "argmin"):
        axis = axes[0]
        check(Case(lambda a: getattr(jnp, op)(a, axis=axis), [shape]), exact=shape[axis] > 1,
              perturb=True)
        return
    check(Case(lambda a: getattr(jnp, op)(a, axis=axes), [shape]),
          exact=op in ("sum", "prod"))


@given(st.sampled_from(["poly", "pair"]), shapes, st.data())
def test_generic_reduce_with_a_user_reducer(reducer, shape, data):
    """``lax.reduce`` with a reducer that is no monoid: every element of the result, not
    just the first, reads its slice (the audit's wrong result shape)."""
    dims = tuple(sorted(data.draw(st.sets(st.integers(0, len(shape) - 1), min_size=1))))
    if reducer == "poly":
        case = Case(lambda a: lax.reduce(a, 0.0, lambda x, y: x * y + y, dims), [shape])
    else:
        case = Case(lambda a, b: lax.reduce((a, b), (0.0, 1.0),
                                            lambda x, y: (x[0] + y[0] * x[1], x[1] * y[1]),
                                            dims), [shape, shape])
    rows = output_rows(case, check(case, exact=False))
    kept = [d for d in range(len(shape)) if d not in dims]
    out_elems = list(np.ndindex(tuple(shape[d] for d in kept)))
    expected = np.array([[all(j[d] == k[i] for i, d in enumerate(kept))
                          for j in np.ndindex(shape)] for k in out_elems])
    outputs = len(out_elems)
    for o in range(len(case.shapes)):  # every output reads its slice of every operand
        block = rows[o * outputs:(o + 1) * outputs]
        assert np.array_equal(block, np.tile(expected, (1, len(case.shapes)))), block


@given(st.sampled_from(["cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"]), shapes,
       st.data(), st.booleans())
def test_cumulative_ops(op, shape, data, reverse):
    axis = data.draw(st.integers(0, len(shape) - 1))
    fn = getattr(lax, op)
    check(Case(lambda a: fn(a, axis=axis, reverse=reverse), [shape]),
          exact=op in ("cumsum", "cumprod", "cumlogsumexp"))


@given(shapes, st.data(), st.integers(1, 3))
def test_sort_multi_operand(shape, data, n_ops):
    dim = data.draw(st.integers(0, len(shape) - 1))
    keys = data.draw(st.integers(1, n_ops))
    check(Case(lambda *a: lax.sort(a, dimension=dim, num_keys=keys), [shape] * n_ops),
          exact=False)


@given(shapes, st.data())
def test_argsort_and_top_k(shape, data):
    dim = data.draw(st.integers(0, len(shape) - 1))
    k = data.draw(st.integers(1, shape[-1]))
    check(Case(lambda a: (jnp.argsort(a, axis=dim), lax.top_k(a, k)), [shape]), exact=False,
          perturb=True)


@st.composite
def windows(draw):
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=2).map(tuple))
    r = len(shape)
    dims = tuple(draw(st.integers(1, 3)) for _ in range(r))
    strides = tuple(draw(st.integers(1, 2)) for _ in range(r))
    padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(r))
    base = tuple(draw(st.integers(1, 2)) for _ in range(r))
    wdil = tuple(draw(st.integers(1, 2)) for _ in range(r))
    return shape, dims, strides, padding, base, wdil


@given(windows(), st.sampled_from(["sum", "max", "min", "poly", "pair"]))
def test_reduce_window(spec, op):
    shape, dims, strides, padding, base, wdil = spec
    if op == "pair":
        def fn(a, b):
            return lax.reduce_window((a, b), (0.0, 1.0), lambda x, y: (x[0] + y[0] * x[1],
                                                                      x[1] * y[1]),
                                     dims, strides, padding, base, wdil)
        ops = [shape, shape]
    else:
        reducer, init = {"sum": (lax.add, 0.0), "max": (lax.max, -jnp.inf),
                         "min": (lax.min, jnp.inf),
                         "poly": (lambda x, y: x * y + y, 0.0)}[op]

        def fn(a):
            out = lax.reduce_window(a, init, reducer, dims, strides, padding, base, wdil)
            return jnp.where(jnp.isfinite(out), out, 0.0)
        ops = [shape]
    assume(_nonempty(fn, *ops))
    check(Case(fn, ops), exact=op == "sum")


# --- products --------------------------------------------------------------------------------

@st.composite
def dot_dims(draw):
    nb, nc = draw(st.integers(0, 1)), draw(st.integers(0, 2))
    nlf, nrf = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    b = [draw(small) for _ in range(nb)]
    c = [draw(small) for _ in range(nc)]
    lf = [draw(small) for _ in range(nlf)]
    rf = [draw(small) for _ in range(nrf)]
    lperm = draw(st.permutations(range(nb + nc + nlf)))
    rperm = draw(st.permutations(range(nb + nc + nrf)))
    # operand axis lperm[i] holds logical axis i: batch first, then contracting, then free
    lshape = [0] * len(lperm)
    for logical, size in enumerate(b + c + lf):
        lshape[lperm[logical]] = size
    rshape = [0] * len(rperm)
    for logical, size in enumerate(b + c + rf):
        rshape[rperm[logical]] = size
    lb, lc = [lperm[i] for i in range(nb)], [lperm[nb + i] for i in range(nc)]
    rb, rc = [rperm[i] for i in range(nb)], [rperm[nb + i] for i in range(nc)]
    return tuple(lshape), tuple(rshape), (((tuple(lc), tuple(rc)), (tuple(lb), tuple(rb))))


@given(dot_dims(), st.sampled_from(["both", "lhs_known", "rhs_known", "lhs_input"]), seeds)
def test_dot_general(spec, which, seed):
    lshape, rshape, dn = spec
    rng = np.random.default_rng(seed)
    dot = lambda a, b: lax.dot_general(a, b, dn)  # noqa: E731
    if which == "both":
        case = Case(dot, [lshape, rshape])
    elif which == "lhs_known":
        lhs = _const(rng, lshape)
        case = Case(lambda b: dot(lhs, b), [rshape])
    elif which == "rhs_known":
        rhs = _const(rng, rshape)
        case = Case(lambda a: dot(a, rhs), [lshape])
    else:
        case = Case(lambda b, x: dot(x, b), [rshape], lambda r: r.standard_normal(lshape))
    check(case, exact=True)


@st.composite
def convs(draw):
    nd = draw(st.integers(1, 2))
    groups = draw(st.integers(1, 2))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    spatial = tuple(draw(st.integers(2, 4)) for _ in range(nd))
    window = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    strides = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding = tuple((draw(st.integers(-1, 2)), draw(st.integers(-1, 2))) for _ in range(nd))
    lhs_dil = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    rhs_dil = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    layout = draw(st.sampled_from(["first", "last"]))
    return nd, groups, cin, cout, spatial, window, strides, padding, lhs_dil, rhs_dil, layout


@given(convs(), st.sampled_from(["known", "state", "input"]), seeds)
def test_conv_general_dilated(spec, kernel, seed):
    nd, groups, cin, cout, spatial, window, strides, padding, lhs_dil, rhs_dil, layout = spec
    sp = "HW"[:nd]
    dn = ("NC" + sp, "OI" + sp, "NC" + sp) if layout == "first" else \
        ("N" + sp + "C", sp + "IO", "N" + sp + "C")
    lhs_shape = (2, cin) + spatial if layout == "first" else (2,) + spatial + (cin,)
    rhs_shape = (cout, cin // groups) + window if layout == "first" else \
        window + (cin // groups, cout)

    def conv(a, k):
        return lax.conv_general_dilated(a, k, strides, padding, lhs_dil, rhs_dil, dn,
                                        feature_group_count=groups)

    assume(_nonempty(conv, lhs_shape, rhs_shape))
    rng = np.random.default_rng(seed)
    if kernel == "known":
        k = _const(rng, rhs_shape, zeros=0.3)
        check(Case(lambda a: conv(a, k), [lhs_shape]), exact=True)
    elif kernel == "state":
        check(Case(conv, [lhs_shape, rhs_shape]), exact=False)
    else:
        check(Case(lambda a, x: conv(a, x), [lhs_shape], lambda r: r.standard_normal(rhs_shape)),
              exact=True)


# --- control flow and calls -------------------------------------------------------------------

BRANCHES = [lambda a: a * 2.0, lambda a: jnp.roll(a, 1), lambda a: a[::-1] ** 2,
            lambda a: jnp.cumsum(a)]


@given(st.integers(1, 4), st.sampled_from(["known", "input", "state"]), st.integers(-1, 4))
def test_cond_and_switch(n_branches, index, value):
    branches = BRANCHES[:n_branches]
    if index == "known":
        case = Case(lambda a: lax.switch(value, branches, a), [(4,)])
        check(case, exact=True)
    elif index == "input":
        case = Case(lambda a, x: lax.switch(x, branches, a), [(4,)],
                    lambda rng: rng.integers(0, n_branches))
        check(case, exact=False, points=6)
    else:
        case = Case(lambda a: lax.cond(a[0] > 0, BRANCHES[1], BRANCHES[2], a), [(4,)])
        check(case, exact=False)


@given(st.integers(0, 5))
def test_fori_loop(trips):
    check(Case(lambda a: lax.fori_loop(0, trips, lambda i, c: jnp.roll(c, 1) * 0.9, a), [(5,)]),
          exact=False)


@given(st.integers(0, 5))
def test_while_loop_with_a_state_dependent_trip_count(trips):
    def until(a):
        return lax.while_loop(lambda c: (c[0] < trips) & (c[1][0] < 3.0),
                              lambda c: (c[0] + 1, c[1] + jnp.roll(c[1], 1) ** 2), (0, a))[1]

    check(Case(until, [(3,)]), exact=False)


@given(st.booleans(), st.integers(1, 4))
def test_scan_reverse_and_length(reverse, length):
    def scanned(a, b):
        def body(c, x):
            c = jnp.roll(c, 1) * x[0] + x[1]
            return c, c * 2.0
        return lax.scan(body, a, b, reverse=reverse)

    check(Case(scanned, [(3,), (length, 2, 3)]), exact=False)


def test_calls_jit_checkpoint_closed_call():
    inner = jax.jit(lambda a: jnp.roll(a, 1)[:2] * a[0])
    check(Case(inner, [(3,)]), exact=True)
    check(Case(jax.checkpoint(lambda a: a[::-1] ** 2), [(3,)]), exact=True)
    check(Case(lambda a: jax.jit(lambda b, c: b @ c)(a, a.T), [(2, 2)]), exact=True)


def test_custom_derivatives_are_sound():
    @jax.custom_jvp
    def straight(a):
        return jnp.round(a)

    straight.defjvp(lambda p, t: (jnp.round(p[0]), t[0][::-1]))

    @jax.custom_vjp
    def rev_grad(a):
        return jnp.sin(a)

    rev_grad.defvjp(lambda a: (jnp.sin(a), a), lambda r, g: (g[::-1] * r,))
    check(Case(straight, [(3,)]), exact=False)
    check(Case(rev_grad, [(3,)]), exact=False, reverse=True)


def test_custom_jvp_next_to_an_integer_leaf():
    """The JVP is analysed w.r.t. the inexact leaves even when an integer leaf (a counter)
    rides along: the straight-through rule's reversed tangent is in the pattern."""
    @jax.custom_jvp
    def straight(a):
        return jnp.round(a)

    straight.defjvp(lambda p, t: (jnp.round(p[0]), t[0][::-1]))
    ir = trace_step(lambda h, x: {"h": straight(h["h"]) + x, "k": h["k"] + 1},
                    {"h": jnp.ones(3), "k": jnp.int32(0)}, jnp.ones((2, 3)))
    sparsity = jacobian_sparsity(ir)
    assert sparsity.tangent is not None
    assert sparsity.pattern.toarray()[np.arange(3), np.arange(3)[::-1]].all()


def test_conv_with_batch_groups_is_sound():
    def conv(a, k):
        return lax.conv_general_dilated(a, k, (1,), "SAME", batch_group_count=2)
    check(Case(lambda a: conv(a, jnp.ones((2, 1, 2))), [(2, 1, 3)]), exact=False)


# --- what the pass does not understand: dense -----------------------------------------------

def _dense_rows(case, pattern):
    rows = output_rows(case, pattern)
    assert rows.all(), rows


def test_callback_is_dense():
    def fn(a):
        return jax.pure_callback(lambda v: np.asarray(v)[::-1],
                                 jax.ShapeDtypeStruct(a.shape, a.dtype), a)
    case = Case(fn, [(3,)])
    _dense_rows(case, case.pattern())


_OPAQUE = jx.Primitive("recur_test_opaque")
_OPAQUE.def_impl(lambda a: np.asarray(a)[::-1])
_OPAQUE.def_abstract_eval(lambda a: a)


def test_unknown_primitive_is_dense():
    case = Case(lambda a, b: _OPAQUE.bind(a * b[0]), [(3,), (2,)])
    rows = output_rows(case, case.pattern())
    assert rows[:, :4].all() and not rows[:, 4].any()


@pytest.mark.parametrize("shape", [(2, 3), (3,)])
def test_rules_that_fail_fall_back_to_dense(shape, monkeypatch):
    """A precise rule that raises gives the dense answer, never a crash or a guess."""
    from recur.passes import _dependency_movement

    def broken(*args, **kwargs):
        raise RuntimeError("planted")

    monkeypatch.setattr(_dependency_movement, "movement", broken)
    case = Case(lambda a: jnp.transpose(a) if a.ndim == 2 else a[::-1], [shape])
    _dense_rows(case, check(case, exact=False))


# --- the audit's reproducer, end to end -------------------------------------------------------

def _audit_step(h, x):
    a, b = h["a"], h["b"]
    return {"a": (0.5 * jnp.tanh(a) + x).at[1, 0].add(0.3 * b[0]),
            "b": 0.5 * b + 0.3 * a.ravel(order="F")[1]}


def _audit_data(length):
    rng = np.random.default_rng(12)
    h0 = {"a": jnp.asarray(rng.standard_normal((2, 2))), "b": jnp.asarray(rng.standard_normal(2))}
    return h0, jnp.asarray(rng.standard_normal((length, 2, 2)))


def _loop(h0, xs):
    return lax.scan(lambda h, x: (_audit_step(h, x),) * 2, h0, xs)[1]


def test_audit_pattern_has_the_true_edges():
    """Flat order: a[0,0] a[0,1] a[1,0] a[1,1] b[0] b[1]; ``ravel(order="F")[1]`` is
    a[1, 0] (element 2), which both b's read and which reads b[0]."""
    h0, xs = _audit_data(3)
    pattern = jacobian_sparsity(trace_step(_audit_step, h0, xs)).pattern.toarray()
    expected = np.eye(6, dtype=bool)
    expected[4, 2] = expected[5, 2] = expected[2, 4] = True
    np.testing.assert_array_equal(pattern, expected)


@pytest.mark.parametrize("method", ["sequential", "deer", "quasi-deer", "picard", "jacobi",
                                    "elk", "quasi-elk"])
def test_audit_reproducer_matches_the_loop(method):
    h0, xs = _audit_data(12)  # elk is kept tiny (T <= 20)
    hs = recur.scan(_audit_step, h0, xs, method=method)
    ref = _loop(h0, xs)
    for key in ref:
        np.testing.assert_allclose(hs[key], ref[key], rtol=1e-9, atol=1e-9, err_msg=key)


def test_audit_reproducer_on_the_plan_a_gpu_picks():
    from recur.runtime._program import execute
    h0, xs = _audit_data(200)
    spec = jax.tree_util.tree_map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), (h0, xs))
    plan = recur.plan(_audit_step, *spec, backend="gpu")
    assert plan.method == "staged"
    hs, _ = execute(plan, h0, xs, None)
    ref = _loop(h0, xs)
    for key in ref:
        np.testing.assert_allclose(hs[key], ref[key], rtol=1e-9, atol=1e-9, err_msg=key)


# --- real sizes: the pass is sparse ----------------------------------------------------------

@pytest.mark.timeout(120)
def test_a_linear_attention_state_of_real_size_is_analysed_sparsely():
    """16 heads x 128 x 128 (n = 262,144): a dense pattern would be 69 GB; the sparse pass
    holds the diagonal (per-row gates, outer-product input, a readout of the state) in a few
    MB, and the per-head normaliser (a reduction over the state) is exact too."""
    import tracemalloc
    H, d = 16, 128

    def body(h, x):
        q, k, v, g = x
        S = g[:, :, None] * h["S"] + jnp.einsum("hk,hv->hkv", k, v)
        z = 0.9 * h["z"] + jnp.einsum("hkv,hk->h", h["S"], q)
        return {"S": S, "z": z}

    h0 = {"S": jnp.zeros((H, d, d), jnp.float32), "z": jnp.zeros(H, jnp.float32)}
    xs = tuple(jnp.ones((2, H, d), jnp.float32) for _ in range(4))
    ir = trace_step(body, h0, xs)
    tracemalloc.start()
    sparsity = jacobian_sparsity(ir)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    n = H * d * d + H
    pattern = sparsity.pattern
    assert pattern.shape == (n, n)
    assert peak < 400e6, peak
    # S reads its own element only; z[h] reads itself and its head's whole S block
    assert pattern[:H * d * d].nnz == H * d * d
    assert (pattern[:H * d * d].diagonal() == 1).all()
    z_rows = pattern[H * d * d:].tocoo()
    assert z_rows.nnz == H * (d * d + 1)
    head_of = np.where(z_rows.col < H * d * d, z_rows.col // (d * d), z_rows.col - H * d * d)
    np.testing.assert_array_equal(head_of, z_rows.row)


@pytest.mark.timeout(120)
def test_an_opaque_primitive_over_a_huge_state_is_a_plan_error():
    """The dense answer for a callback over 40,000 elements (1.6e9 entries) is not held:
    a PlanError names the primitive, never a MemoryError or an internal exception."""
    n = 40_000

    def step(h, x):
        y = jax.pure_callback(lambda v: np.asarray(v)[::-1],
                              jax.ShapeDtypeStruct(h.shape, h.dtype), h)
        return 0.5 * y + x
    with pytest.raises(recur.PlanError, match="pure_callback"):
        recur.plan(step, jnp.zeros(n), jnp.ones((4, n)))
