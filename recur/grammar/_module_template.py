"""The fixed text of a generated module, as a template.

The module (imports: ``math``, ``jax``, ``jax.numpy``) defines ``step(h, x, p)``,
``lax_step(h, x, p) -> (h', y)`` (the new states and the declared outputs),
``init(params=None)``, ``param_defaults()``, ``PARAM_DEFAULTS``, ``fill_params``, the
shapes and the dtype. :func:`fill` puts in what the code generator gives: a line of
:data:`MODULE` that is only ``$name`` is replaced by the lines of the list ``name`` (none,
one or many, such as the lines that evaluate the recurrence's expressions); other
``$name``s are substituted in place.
"""

from __future__ import annotations

import string

__all__ = ["MODULE", "STEP_INDEX_DOC", "STEP_INDEX_READ", "fill"]

MODULE = '''\
"""$title.

step(h, x, p) -> dict: one step. h: states, x: inputs of this step, p: params (all
dicts keyed by the declared names; fill defaults with fill_params first).
lax_step(h, x, p) -> (dict, dict): the new states and the declared outputs, for
jax.lax.scan(lambda h, x: lax_step(h, x, p), h0, xs).
$step_index_doc
init(params=None) -> dict: the initial states.

$classification_doc
$plan_doc
"""

import math

import jax
import jax.numpy as jnp

NAME = $name
DIMS = $dims
DTYPE = $dtype
STATE_SHAPES = $states
INPUT_SHAPES = $inputs
PARAM_SHAPES = $params
OUTPUT_SHAPES = $outputs
USES_STEP_INDEX = $uses_t
CLASSIFICATION = $classification


def _out(v, shape):
    """A new state or output value: cast to DTYPE, broadcast to its shape."""
    return jnp.broadcast_to(jnp.asarray(v, DTYPE), shape)


def param_defaults():
    """The params' default values (None where the file gives none)."""
    return {
$param_defaults
    }


PARAM_DEFAULTS = param_defaults()


def fill_params(params=None):
    """The params with defaults filled in, cast to DTYPE; raises ValueError when one
    without default is missing or an unknown one is given."""
    given = dict(params or {})
    unknown = sorted(set(given) - set(PARAM_SHAPES))
    if unknown:
        raise ValueError(f'unknown params {unknown}; declared: {sorted(PARAM_SHAPES)}')
    p = {}
    for k in PARAM_SHAPES:
        v = given[k] if given.get(k) is not None else PARAM_DEFAULTS[k]
        if v is None:
            raise ValueError(f'param {k!r} has no default and was not given')
        p[k] = jnp.asarray(v, DTYPE)
    return p


def init(params=None):
    """The initial states (params: only those the initial values use are needed)."""
    p = dict(PARAM_DEFAULTS)
    p.update({k: v for k, v in (params or {}).items() if v is not None})
$init_params
    return {
$init_states
    }


def step(h, x, p):
    """One step: new states from states h, this step's inputs x, params p."""
$reads
$step_locals
    return {
$step_updates
    }


def lax_step(h, x, p):
    """One step with outputs: (new states, outputs), outputs computed from the
    previous states h, this step's inputs x, params p, and the new states (h')."""
$reads
$lax_locals
$lax_updates
    outputs = {}
$lax_outputs
    return {$new_states}, outputs
'''

# the docstring's and the steps' lines for a recurrence that reads the step index t
STEP_INDEX_DOC = [
    'The recurrence uses the step index t: pass it as x["t"] (the caller supplies',
    "jnp.arange(T) as an extra input leaf).",
]

STEP_INDEX_READ = [
    "    if x is None or 't' not in x:",
    "        raise KeyError('this recurrence uses the step index t: pass x[\"t\"] = "
    "jnp.arange(T) among the inputs')",
    "    t_ = jnp.asarray(x['t'], DTYPE)",
]


def fill(template: str, **parts) -> list:
    """The lines of ``template`` with ``parts`` in (see the module docstring)."""
    inline = {k: v for k, v in parts.items() if not isinstance(v, list)}
    lines = []
    for line in template.split("\n"):
        if isinstance(parts.get(line[1:]), list) and line.startswith("$"):
            lines += parts[line[1:]]
        else:
            lines.append(string.Template(line).substitute(inline))
    return lines
