r"""The sharded program's boundary with the user's mesh: ``Auto`` and ``Explicit`` axes.

JAX types the arrays of a mesh with ``Explicit`` axes (``jax.make_mesh``'s default) by their
sharding: ``f64[12@t, 3]``.  Two consequences for a program split along time:

* a typed array must be split evenly (``T`` divisible by ``D``), so a padded trajectory
  cannot be cut back to ``T`` steps and stay typed as split;
* JAX's own transformations of typed values outside a mesh context need one:
  ``jax.grad`` of a loss that carries the mesh in its type fails (``Length of device
  assignment 1 is not equal to the size of the mesh``) unless the user is inside
  ``jax.set_mesh(mesh)`` -- the same holds for plain JAX code.

So the program always runs on the ``Auto`` version of the mesh (same devices, same axis
names, every axis ``Auto``), inside ``use_abstract_mesh`` of it: inputs whose type carries
``Explicit`` axes are retyped (``reshard`` to an unsharded spec, no data moved) and laid out
with sharding constraints.  At the end:

* outside a mesh context (the README's recipe: ``mesh=`` passed, or arrays sharded over
  the mesh): results come back untyped, laid out along time (replicated when the inputs
  were padded, as JAX arrays cannot be split unevenly), so the user's ``grad``/``jvp``/
  ``jit`` need no context;
* inside ``jax.set_mesh(mesh)`` with ``Explicit`` axes: results are typed on the user's
  mesh (``P(axis)`` along time, ``P()`` when padded), which is what ``jax.sharding.auto_axes``
  does, and everything the user does with them is typed.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec


def auto(mesh) -> jax.sharding.Mesh:
    """``mesh`` with every axis ``Auto``."""
    types = tuple(getattr(mesh, "axis_types", ()) or ())
    if types and all(t == AxisType.Auto for t in types):
        return mesh
    return mesh.update(axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def _has_explicit(abstract_mesh) -> bool:
    if abstract_mesh is None or getattr(abstract_mesh, "empty", True):
        return False
    return any(t == AxisType.Explicit for t in abstract_mesh.axis_types)


def explicit_context() -> bool:
    """True inside ``jax.set_mesh`` of a mesh with ``Explicit`` axes."""
    return _has_explicit(jax.sharding.get_abstract_mesh())


def _typed(v) -> bool:
    try:
        sharding = jax.typeof(v).sharding
    except Exception:  # noqa: BLE001 - no type-level sharding
        return False
    return _has_explicit(getattr(sharding, "mesh", None))


def untyped(v):
    """``v`` with no ``Explicit`` axis in its type (call under the ``Auto`` abstract mesh)."""
    if not _typed(v):
        return v
    return jax.reshard(v, PartitionSpec(*([None] * v.ndim)))


def place(v, mesh, spec):
    """``v`` laid out as ``spec`` over the ``Auto`` mesh ``mesh``."""
    return jax.lax.with_sharding_constraint(v, NamedSharding(mesh, spec))


def typed(tree: Any, mesh, spec):
    """The leaves of ``tree`` typed as ``spec`` over the user's mesh (explicit context)."""
    return jax.tree_util.tree_map(lambda v: jax.reshard(v, NamedSharding(mesh, spec)), tree)


__all__ = ["auto", "explicit_context", "untyped", "place", "typed"]
