"""The device layout pass: split the time axis of a plan over one mesh axis.

Input: a ``Plan`` and a ``jax.sharding.Mesh`` with the name of the axis that carries time.
Output: the same plan with a ``Layout`` (devices, steps per device, padding, and for every
stage what one iteration communicates) and its mesh; the runtime then runs the plan
inside ``shard_map`` (``runtime/_sharding.py`` has the algorithms).

Communication per iteration, per device (``n`` state elements of the stage, ``D``
devices, ``s`` bytes per element):

* iterative methods (``deer``, ``quasi-deer``, ``picard``, ``jacobi``): the shifted
  iterate crosses each device boundary once (``n s``), the scan gathers the ``D`` chunk
  summaries (``D (|P| + n) s``, ``|P|`` = ``n`` diagonal, ``m k^2`` blocks, 0 for
  ``jacobi``), the stopping test is two scalar all-reduces; the Lyapunov estimate adds one
  shifted vector per sweep (8 at the first iteration, 2 later);
* ``elk``, ``quasi-elk``: the shifted iterate, the parallel Kalman filter's ``D`` local
  totals (one ``all_gather`` of ``D (3 |F| + 2 n) s``, ``|F|`` = ``n`` diagonal, ``m k^2``
  blocks), the next step's ``F`` and ``c`` (``ppermute``), the smoother's scan summaries
  (``D (|F| + n) s``), scalar all-reduces for the merit and the stopping test;
* ``window=W``: per sweep the two scans over the window (two gathers of summaries), one
  boundary state, a ``pmin`` for the first failing step and scalar all-reduces;
* ``scan``: one gather of summaries, plus one shift and the all-reduces of the check;
* ``sequential``: ``D - 1`` rounds, each passing one state (``n s``) to the next device.

Other mesh axes carry a batch of sequences when the plan runs under ``jax.vmap(...,
spmd_axis_name=axis)``: no traffic per iteration along them (the sequences are
independent; every group of devices along time stops on its own).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from .._errors import PlanError
from .._plan import Layout, Plan
from .. import _methods
from ._report import coefficient_elements

# Methods whose algorithms have a sharded form (runtime/_sharding.py).
SHARDED_METHODS = _methods.sharded()


def _bytes(v: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{int(v)} B"


def _summary_elements(structure, method: str, n: int) -> int:
    lin = _methods.get(method).linearisation
    if lin == "zero" or structure.jacobian == "zero":
        return 0
    if lin == "identity":
        return 1
    return n if lin == "diagonal" else coefficient_elements(structure, n)


def _communication(stage, data, devices: int, itemsize: int, window) -> str:
    n = len(data.elements)
    method = stage.method
    state = n * itemsize
    if method == "sequential":
        return (f"sequential loop in {devices} rounds: {devices - 1} x {_bytes(state)} passed "
                f"device to device (ppermute); wall time of one loop over T, no inputs gathered")
    summary = devices * (_summary_elements(data.structure, method, n) + n) * itemsize
    if method in ("scan", "semiring"):
        return (f"one all_gather of chunk summaries ({_bytes(summary)}), one boundary state "
                f"({_bytes(state)}, ppermute) and 2 scalar all-reduces for the check")
    if window is not None:
        return (f"per sweep of the window (W={window}, which may span devices): boundary state "
                f"{_bytes(state)} (ppermute), 2 all_gathers of scan summaries "
                f"{_bytes(summary)} each, a pmin and 3 scalar all-reduces")
    if _methods.get(method).damped:
        f_elements = max(_summary_elements(data.structure, method, n), n)
        kalman = devices * (3 * f_elements + 2 * n) * itemsize
        smoother = devices * (f_elements + n) * itemsize
        return (f"per iteration: boundary state {_bytes(state)} (ppermute), all_gather of the "
                f"Kalman filter's local totals {_bytes(kalman)}, next step's F and c "
                f"{_bytes((f_elements + n) * itemsize)} (ppermute), all_gather of the "
                f"smoother's scan summaries {_bytes(smoother)}, 4 scalar all-reduces; + the "
                f"error estimate's scan ({_bytes(summary)}) once the step test passes")
    return (f"per iteration: boundary state {_bytes(state)} (ppermute), all_gather of chunk "
            f"summaries {_bytes(summary)}, 2 scalar all-reduces; + {_bytes(state)} per "
            f"Lyapunov sweep (8 at the first iteration, 2 later)")


def attach_layout(plan: Plan, mesh: Any, axis_name: str, batch_axes: tuple[str, ...] = (),
                  batched: bool = False) -> Plan:
    """``plan`` split over ``mesh.shape[axis_name]`` devices along time; ``batch_axes``:
    the mesh axes a ``vmap``-ed batch is split over (``batched``: under ``vmap``)."""
    names = tuple(getattr(mesh, "axis_names", ()))
    if not names or not hasattr(mesh, "shape"):
        raise PlanError(f"mesh= must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis_name is None:
        if len(names) != 1:
            raise PlanError(f"the mesh has axes {names}: say which carries time with "
                            "axis_name=")
        axis_name = names[0]
    if axis_name not in names:
        raise PlanError(f"axis_name={axis_name!r} is not an axis of the mesh (its axes: "
                        f"{names})")
    devices = int(dict(mesh.shape)[axis_name])
    T = plan.length
    if T == 0:  # nothing to split
        return plan
    if T < devices:
        raise PlanError(f"T={T} steps cannot be split over {devices} devices along "
                        f"{axis_name!r}: each device needs at least one step; use a mesh axis "
                        "of at most T devices or run on one device.")
    for st in plan.stages:
        if st.method not in SHARDED_METHODS:
            raise PlanError(f"method {st.method!r} (stage {', '.join(st.states)}) has no "
                            f"sequence-parallel form yet; across devices use one of "
                            f"{SHARDED_METHODS}.")
    window = dict(plan.options).get("window")
    window = None if window is None or int(window) >= T else int(window)
    local = -(-T // devices)
    itemsize = int(jnp.dtype(plan.dtype).itemsize)
    comm = tuple((", ".join(st.states), _communication(st, data, devices, itemsize, window))
                 for st, data in zip(plan.stages, plan.stage_data))
    batch_axes = tuple(str(a) for a in batch_axes if a in names and a != axis_name)
    layout = Layout(axis_name=str(axis_name), devices=devices, local_length=local,
                    padding=local * devices - T,
                    mesh_shape=tuple((str(k), int(v)) for k, v in dict(mesh.shape).items()),
                    communication=comm, batch_axes=batch_axes, batched=bool(batched))
    return dataclasses.replace(plan, layout=layout, mesh=mesh, ir=plan.ir,
                               stage_data=plan.stage_data)


__all__ = ["attach_layout", "SHARDED_METHODS"]
