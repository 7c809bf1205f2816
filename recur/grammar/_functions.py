"""The functions of the ``.rec`` language: arity, shape rule, meaning, and JAX spelling.

Reductions take the array first and an optional axis, positionally or as the keyword
``axis=``: ``sum(x)``, ``sum(x, 0)``, ``mean(x, axis=1)``, ``logsumexp(x, 0)`` (the stable
``log(sum(exp(x), axis))``). ``max`` and ``min`` are two functions in one name, told apart
without guessing:

* ``max(a, b)`` / ``min(a, b)``: the elementwise maximum / minimum of two arrays (NumPy's
  ``maximum``/``minimum``); ``max(x, 0)`` is ``relu(x)``, never a reduction over axis 0;
* ``max(x)`` / ``min(x)``: the largest / smallest element (one argument);
* ``max(x, axis=k)`` / ``min(x, axis=k)``: the reduction over axis ``k``; the keyword is
  required, since the positional form is the elementwise one.

For a semiring recurrence this reads like the mathematics: a Viterbi step is
``delta' = max(delta[:, None] + logA, axis=0) + logB[:, x]``, an HMM forward step
``alpha' = logsumexp(alpha[:, None] + logA, 0) + logB[:, x]``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FUNCTIONS", "FuncSpec", "ELEMENTWISE_UNARY", "REDUCTIONS", "is_reduction"]


@dataclass(frozen=True)
class FuncSpec:
    name: str
    min_args: int
    max_args: int       # -1 = any number
    category: str       # elementwise | where | reduce | bilinear | solve | matrix | constant
    jax: str            # how generated code spells it
    signature: str      # for error messages


ELEMENTWISE_UNARY = {
    "abs": "jnp.abs", "sqrt": "jnp.sqrt", "exp": "jnp.exp", "log": "jnp.log",
    "log1p": "jnp.log1p", "expm1": "jnp.expm1", "sin": "jnp.sin", "cos": "jnp.cos",
    "tan": "jnp.tan", "tanh": "jnp.tanh", "sigmoid": "jax.nn.sigmoid",
    "softplus": "jax.nn.softplus", "relu": "jax.nn.relu",
}

# reduction -> (JAX spelling, linear in its argument)
REDUCTIONS = {
    "sum": ("jnp.sum", True),
    "mean": ("jnp.mean", True),
    "logsumexp": ("jax.nn.logsumexp", False),
    "max": ("jnp.max", False),
    "min": ("jnp.min", False),
}

FUNCTIONS: dict = {name: FuncSpec(name, 1, 1, "elementwise", j, f"{name}(x)")
                   for name, j in ELEMENTWISE_UNARY.items()}
FUNCTIONS.update({
    "max": FuncSpec("max", 1, 2, "elementwise", "jnp.maximum",
                    "max(a, b) (elementwise), max(x) or max(x, axis=k) (reduction)"),
    "min": FuncSpec("min", 1, 2, "elementwise", "jnp.minimum",
                    "min(a, b) (elementwise), min(x) or min(x, axis=k) (reduction)"),
    "clip": FuncSpec("clip", 3, 3, "elementwise", "jnp.clip", "clip(x, lo, hi)"),
    "where": FuncSpec("where", 3, 3, "where", "jnp.where", "where(c, a, b)"),
    "sum": FuncSpec("sum", 1, 2, "reduce", "jnp.sum", "sum(x) or sum(x, axis)"),
    "mean": FuncSpec("mean", 1, 2, "reduce", "jnp.mean", "mean(x) or mean(x, axis)"),
    "logsumexp": FuncSpec("logsumexp", 1, 2, "reduce", "jax.nn.logsumexp",
                          "logsumexp(x) or logsumexp(x, axis)"),
    "dot": FuncSpec("dot", 2, 2, "bilinear", "jnp.dot", "dot(a, b)"),
    "outer": FuncSpec("outer", 2, 2, "bilinear", "jnp.outer", "outer(a, b)"),
    "inv": FuncSpec("inv", 1, 1, "matrix", "jnp.linalg.inv", "inv(M)"),
    "cholesky": FuncSpec("cholesky", 1, 1, "matrix", "jnp.linalg.cholesky", "cholesky(M)"),
    "logdet": FuncSpec("logdet", 1, 1, "matrix", "jnp.linalg.slogdet", "logdet(M)"),
    "solve": FuncSpec("solve", 2, 2, "solve", "jnp.linalg.solve", "solve(A, b)"),
    "eye": FuncSpec("eye", 1, 1, "constant", "jnp.eye", "eye(N)"),
    "zeros": FuncSpec("zeros", 1, -1, "constant", "jnp.zeros", "zeros(N, ...)"),
    "ones": FuncSpec("ones", 1, -1, "constant", "jnp.ones", "ones(N, ...)"),
})


def is_reduction(call) -> bool:
    """Whether a (checked-arity) call is a reduction: ``sum``/``mean``/``logsumexp``, or
    ``max``/``min`` with one argument or an ``axis=`` keyword."""
    if call.func in ("max", "min"):
        return len(call.args) == 1 or any(k.name == "axis" for k in call.kwargs)
    return FUNCTIONS[call.func].category == "reduce"
