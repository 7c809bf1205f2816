"""The functions of the ``.rec`` language: arity, shape rule, meaning, and JAX spelling."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FUNCTIONS", "FuncSpec", "ELEMENTWISE_UNARY"]


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

FUNCTIONS: dict = {name: FuncSpec(name, 1, 1, "elementwise", j, f"{name}(x)")
                   for name, j in ELEMENTWISE_UNARY.items()}
FUNCTIONS.update({
    "max": FuncSpec("max", 2, 2, "elementwise", "jnp.maximum", "max(a, b)"),
    "min": FuncSpec("min", 2, 2, "elementwise", "jnp.minimum", "min(a, b)"),
    "clip": FuncSpec("clip", 3, 3, "elementwise", "jnp.clip", "clip(x, lo, hi)"),
    "where": FuncSpec("where", 3, 3, "where", "jnp.where", "where(c, a, b)"),
    "sum": FuncSpec("sum", 1, 2, "reduce", "jnp.sum", "sum(x) or sum(x, axis)"),
    "mean": FuncSpec("mean", 1, 2, "reduce", "jnp.mean", "mean(x) or mean(x, axis)"),
    "dot": FuncSpec("dot", 2, 2, "bilinear", "jnp.dot", "dot(a, b)"),
    "outer": FuncSpec("outer", 2, 2, "bilinear", "jnp.outer", "outer(a, b)"),
    "inv": FuncSpec("inv", 1, 1, "matrix", "jnp.linalg.inv", "inv(M)"),
    "cholesky": FuncSpec("cholesky", 1, 1, "matrix", "jnp.linalg.cholesky", "cholesky(M)"),
    "logdet": FuncSpec("logdet", 1, 1, "matrix", "_logdet", "logdet(M)"),
    "solve": FuncSpec("solve", 2, 2, "solve", "jnp.linalg.solve", "solve(A, b)"),
    "eye": FuncSpec("eye", 1, 1, "constant", "jnp.eye", "eye(N)"),
    "zeros": FuncSpec("zeros", 1, -1, "constant", "jnp.zeros", "zeros(N, ...)"),
    "ones": FuncSpec("ones", 1, -1, "constant", "jnp.ones", "ones(N, ...)"),
})
