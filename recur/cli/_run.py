"""``recur run``: run a ``.rec`` recurrence on ``.npz`` inputs and write its states (and
declared per-step outputs) to an ``.npz``.

Without ``--out`` it writes ``FILE.out.npz`` in the current directory. Where the result
goes is decided, and refused, before any work (see ``_files``). ``--check`` also runs the
sequential loop and exits 1 when ``|recur - loop| > sqrt(eps) (1 + |loop|)`` anywhere (eps
of the state's dtype: 3.5e-4 for float32, 1.5e-8 for float64) or when a non-finite value
of one is not the same non-finite value in the other. A state that holds NaN/inf is
reported on stderr with the first step where it appears. Complex arrays are refused when
the model computes in a real dtype (never silently made real)."""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple

from .._errors import RecurError
from ._checks import _compare, _first_nonfinite, _info_summary, _tolerance
from ._common import _load, _warn
from ._files import _check_names, _read_npz, _refuse_protected, _write_npz, _written_by_recur


class _Call(NamedTuple):
    """The arguments of one run of the recurrence, as ``rec.scan`` takes them."""
    h0: Any
    xs: Any
    params: Any
    length: int | None


def cmd_run(args) -> int:
    if args.length is not None and args.length < 0:
        raise RecurError(f"--length must be 0 or more, got {args.length}.")
    out_path, replacing = _out_path(args)
    rec = _load(args)
    call = _arguments(args, rec)
    hs = _run(rec, call, args.method)
    ref = None
    if args.check:
        print("running the sequential loop for --check", flush=True)
        ref = _sequential(rec, call)
    _warn_nonfinite_states(hs, ref)
    status = 0 if ref is None else _check(hs, ref)
    outputs = _outputs(rec, call, args.method) if rec.model.outputs else {}
    _write_npz(out_path, {**hs, **outputs})
    print(f"{'replaced' if replacing else 'wrote'} {os.path.abspath(out_path)} "
          f"(states {', '.join(hs)}"
          + (f"; outputs {', '.join(outputs)}" if outputs else "") + ")")
    return status


def _out_path(args) -> tuple[str, bool]:
    """Where the result goes, and whether a file is there already; refused when it is the
    .rec file, an input, a folder, or a file ``recur run`` did not write (without
    ``--force``)."""
    if args.out:
        out_path = args.out
    else:
        stem = os.path.splitext(os.path.basename(args.file))[0]
        if args.name:
            stem += "." + args.name
        out_path = os.path.join(os.getcwd(), stem + ".out.npz")
    protected = [(args.file, "the .rec file"), (args.inputs, "the --inputs file"),
                 (args.params, "the --params file"), (args.init, "the --init file")]
    _refuse_protected(out_path, "--out", protected)
    if os.path.isdir(out_path):
        raise RecurError(f"--out {out_path} is a folder; give a file name.")
    replacing = os.path.exists(out_path)
    if replacing and not args.force and not _written_by_recur(out_path):
        raise RecurError(f"--out {out_path} exists and is not an .npz that recur run wrote; "
                         "recur does not overwrite it: pass --force to replace it, or choose "
                         "another path.")
    return out_path, replacing


# ----------------------------------------------------------------------------- arguments

def _arguments(args, rec) -> _Call:
    """The --inputs, --params and --init files, read (all three before any is checked),
    checked against the declared names and shapes, and warned about when non-finite."""
    import jax.numpy as jnp

    model = rec.model
    dtype = model.dtype
    xs = _read_npz(args.inputs, "--inputs", "input", list(model.inputs), dtype)
    params = _read_npz(args.params, "--params", "param", list(model.params), dtype)
    init = _read_npz(args.init, "--init", "state", list(model.states), dtype)
    xs = _checked_inputs(args, model, xs)
    _check_params(args, model, params)
    h0 = _initial_state(args, rec, init, params)
    if xs is not None:
        xs = {k: jnp.asarray(v, dtype) for k, v in xs.items()}
    _warn_nonfinite_arguments(xs, params, init)
    return _Call(h0, xs, params, None if xs is not None else args.length)


def _checked_inputs(args, model, xs):
    """The inputs (None when there are none), with T agreeing with --length if given."""
    inputs_shape = ", ".join(f"{k}(T{''.join(f', {d}' for d in s)})"
                             for k, s in model.inputs.items())
    if model.inputs and xs is None:
        raise RecurError(f"recurrence {model.name!r} declares input(s) {inputs_shape}: pass "
                         "--inputs X.npz with one array per input (leading axis T).")
    if xs is not None:
        _check_names(xs, model.inputs, "--inputs", args.inputs, "input", model, "")
        if not xs:
            xs = None
    if not model.inputs and xs is None and args.length is None:
        raise RecurError(f"recurrence {model.name!r} declares no inputs, so recur cannot "
                         "know how many steps to run: pass --length T.")
    if xs is not None and args.length is not None:
        T = next(iter(xs.values())).shape[0] if next(iter(xs.values())).ndim else None
        if T != args.length:
            raise RecurError(f"--length {args.length} but the inputs in {args.inputs} have "
                             f"{T} steps; leave out --length (the inputs set T).")
    return xs


def _check_params(args, model, params) -> None:
    """Params may be left out (the file's defaults), never unknown."""
    if params is not None:
        unknown = sorted(k for k in params if k not in model.params)
        if unknown:
            raise RecurError(f"--params {args.params} holds {', '.join(unknown)}, which "
                             f"recurrence {model.name!r} does not declare; its params are "
                             f"{', '.join(model.params) or 'none'}.")


def _initial_state(args, rec, init, params):
    """The --init states (every one, with its declared shape), or the file's."""
    import jax.numpy as jnp

    model = rec.model
    if init is None:
        return rec.init(params)
    _check_names(init, model.states, "--init", args.init, "state", model,
                 " (give every state, or leave out --init to start from the file's "
                 "initial values)")
    for k, shape in model.states.items():
        if tuple(init[k].shape) != tuple(shape):
            raise RecurError(f"--init {args.init}: state {k!r} has shape "
                             f"{tuple(init[k].shape)}; recurrence {model.name!r} declares "
                             f"{tuple(shape)}.")
    return {k: jnp.asarray(init[k], model.dtype) for k in model.states}


def _warn_nonfinite_arguments(xs, params, init) -> None:
    import numpy as np

    for flag, arrays in (("--inputs", xs), ("--params", params), ("--init", init)):
        for k, v in (arrays or {}).items():
            bad = _first_nonfinite(np.asarray(v)) if flag == "--inputs" else \
                ((0, "NaN/inf") if not np.all(np.isfinite(np.asarray(v))) else None)
            if bad is not None:
                _warn(f"{flag} array {k!r} holds non-finite values ({bad[1]})"
                      + (f", first at step {bad[0]}" if flag == "--inputs" else ""))


# ----------------------------------------------------------------------------- running

def _run(rec, call: _Call, method: str) -> dict[str, Any]:
    """The states, run with ``method`` and timed, compiling included."""
    import jax
    import numpy as np

    name = rec.model.name
    print(f"running {name!r} (method {method}; compiling first)", flush=True)
    start = time.perf_counter()
    hs, info = rec.scan(call.h0, call.xs, call.params, length=call.length, method=method,
                        return_info=True)
    hs = jax.tree_util.tree_map(np.asarray, jax.block_until_ready(hs))
    elapsed = time.perf_counter() - start
    residual, converged, fell_back = _info_summary(info)
    print(f"ran {name!r} with method {info.method} in {elapsed:.3f} s, compiling "
          f"included (residual {residual:.3g}, converged: {'yes' if converged else 'no'}, "
          f"fell back: {'yes' if fell_back else 'no'})")
    return hs


def _sequential(rec, call: _Call) -> dict[str, Any]:
    import numpy as np

    ref = rec.scan(call.h0, call.xs, call.params, length=call.length, method="sequential")
    return {k: np.asarray(v) for k, v in ref.items()}


def _outputs(rec, call: _Call, method: str) -> dict[str, Any]:
    """The declared per-step outputs, through ``recur.lax.scan``."""
    import jax
    import numpy as np

    _, ys = rec.lax_scan(call.h0, call.xs, call.params, length=call.length, method=method)
    outputs = {k: np.asarray(v) for k, v in jax.block_until_ready(ys).items()}
    for k, v in outputs.items():
        bad = _first_nonfinite(v)
        if bad is not None:
            _warn(f"output {k!r} holds non-finite values ({bad[1]}); the first appears at "
                  f"step {bad[0]} (0-based) of {v.shape[0]}")
    return outputs


# ----------------------------------------------------------------------------- verdicts

def _warn_nonfinite_states(hs, ref) -> None:
    """Where each state first holds NaN/inf, and whether the loop (``ref``) does too."""
    for k, v in hs.items():
        bad = _first_nonfinite(v)
        if bad is None:
            continue
        step, kind = bad
        text = (f"state {k!r} holds non-finite values ({kind}); the first appears at step "
                f"{step} (0-based) of {v.shape[0]}")
        if ref is None:
            text += "; run with --check to see whether the sequential loop produces them too"
        else:
            ref_bad = _first_nonfinite(ref[k])
            if ref_bad is None:
                text += "; the sequential loop stays finite: recur's result is wrong there"
            elif ref_bad[0] == step:
                text += (f"; the sequential loop produces them too ({ref_bad[1]}, from the "
                         "same step): the recurrence itself does, with these inputs and "
                         "params")
            else:
                text += (f"; the sequential loop produces them too, but from step "
                         f"{ref_bad[0]} ({ref_bad[1]})")
        _warn(text)


def _check(hs, ref) -> int:
    """--check's verdict, printed: 0 when every state agrees with the loop, else 1."""
    worst = None
    failed = []
    for k in hs:
        c = _compare(hs[k], ref[k])
        tol = _tolerance(hs[k].dtype)
        if c["mismatches"]:
            mine, loop = c["mismatch_values"]
            failed.append(f"state {k!r}: {c['mismatches']} value(s) where recur and the "
                          f"loop disagree on a non-finite value (first at step "
                          f"{c['mismatch_step']}: recur {mine:.6g}, loop {loop:.6g})")
        elif c["max_scaled"] > tol:
            failed.append(f"state {k!r}: difference {c['max_abs']:.3g} at step "
                          f"{c['worst_step']}")
        if worst is None or c["max_abs"] > worst[1]["max_abs"]:
            worst = (k, c, tol)
    if worst is not None:
        _print_largest_difference(*worst, hs[worst[0]].dtype)
    if failed:
        print("check: FAILED: " + "; ".join(failed))
        return 1
    print("check: passed (equal non-finite values count as agreement)"
          if any(_first_nonfinite(v) for v in hs.values()) else "check: passed")
    return 0


def _print_largest_difference(k, c, tol, dtype) -> None:
    import numpy as np

    where = f"state {k!r}" + (f", step {c['worst_step']}" if c["worst_step"] is not None
                              else "")
    print(f"check: largest difference to the sequential loop {c['max_abs']:.3g} "
          f"({where}; over the values finite in both); tolerance |recur - loop| <= "
          f"{tol:.2g} x (1 + |loop|), the square root of the machine epsilon of "
          f"{np.dtype(dtype).name}")


__all__ = ["cmd_run"]
