"""The ``recur`` command (also ``python -m recur``).

    recur check FILE.rec                     exit 0, or 1 with the error
    recur explain FILE.rec [--dim D=64] [--length T] [--backend gpu] [--json] [--dot] [--passes]
    recur compile FILE.rec [-o OUT.py]       standalone JAX module
    recur run FILE.rec --inputs X.npz [--params P.npz] [--init H0.npz] [--length T]
                       [--method M] [--check] [--out OUT.npz] [--force]
    recur bench FILE.rec [--length T] [--methods a,b] [--reps N] [--plot out.png]
                         [--json out.json]
    recur demo [--length T]                  what recur does here and on a GPU, checked

``run`` reads and writes ``.npz`` files keyed by the declared names. Without ``--out`` it
writes ``FILE.out.npz`` in the current directory and prints the path. It never writes over
the ``.rec`` file or an input (not even with ``--force``), nor over an existing file that
is not an ``.npz`` it wrote (marked by its zip comment) unless ``--force``; writes go
through a temporary file in the target folder, renamed into place. ``--check`` also runs
the sequential loop and exits 1 when ``|recur - loop| > sqrt(eps) (1 + |loop|)`` anywhere
(eps of the state's dtype: 3.5e-4 for float32, 1.5e-8 for float64) or when a non-finite
value of one is not the same non-finite value in the other (equal NaN/inf agree). A state
that holds NaN/inf is reported on stderr with the first step where it appears. Complex
arrays are refused when the model computes in a real dtype (never silently made real).

``bench`` runs the sequential loop first (the reference of the difference and speed
columns), then each method, ``auto`` last, printing each row as it finishes; a method that
fails is reported in its row and the bench goes on. ``--reps`` (at least 1) timed runs
follow one compiling run.

Errors go to stderr with exit status 1 and no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Sequence

from ._errors import RecurError


def _console(stderr: bool = False):
    from rich.console import Console
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 140)


def _dims(items: Sequence[str] | None) -> dict[str, int]:
    dims = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise RecurError(f"--dim expects NAME=VALUE, got {item!r}")
        try:
            dims[name.strip()] = int(value)
        except ValueError:
            raise RecurError(f"--dim {name.strip()} needs an integer, got {value!r}") from None
    return dims


def _load(args):
    from ._dsl import load
    return load(args.file, name=getattr(args, "name", None), **_dims(getattr(args, "dim", None)))


def cmd_check(args) -> int:
    rec = _load(args)
    _console().print(f"{args.file}: recurrence {rec.model.name!r} is valid "
                     f"({len(rec.model.states)} state(s): "
                     + ", ".join(f"{s}={k}" for s, k in rec.model.kinds.items()) + ")")
    return 0


def _plan_table(plan):
    from rich.table import Table
    table = Table(title=f"plan: {plan.kind}, method {plan.method}, backend {plan.backend}")
    for col in ("stage", "states", "kind", "jacobian", "method"):
        table.add_column(col)
    for i, st in enumerate(plan.stages):
        table.add_row(str(i), ", ".join(st.states), st.kind, st.jacobian, st.method)
    return table


def cmd_explain(args) -> int:
    rec = _load(args)
    plan = rec.plan(length=args.length, backend=args.backend)
    out = _console()
    if args.json:
        print(plan.to_json(indent=2))
    elif args.dot:
        print(_dot(plan))
    elif args.passes:
        print(plan.explain_passes())
    else:
        out.print(_plan_table(plan))
        print(plan.explain())
        for state, (kind, reason) in rec.model.classification.items():
            print(f"symbolic: {state}: {kind} - {reason}")
    return 0


def _dot(plan) -> str:
    lines = ["digraph recur {"]
    for name, size in plan.state_sizes:
        lines.append(f'  "{name}" [label="{name} ({size})"];')
    for u, v, w in plan.edges:
        lines.append(f'  "{u}" -> "{v}" [label="{w}"];')
    lines.append("}")
    return "\n".join(lines)


def cmd_compile(args) -> int:
    from ._dsl import compile as compile_rec
    with open(args.file, encoding="utf-8") as fh:
        text = fh.read()
    module = compile_rec(text, name=args.name, filename=args.file, **_dims(args.dim))
    if args.output:
        _refuse_protected(args.output, "-o", [(args.file, "the .rec file")])
        _atomic_write(args.output, "-o", lambda fh: fh.write(module.encode("utf-8")))
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(module)
    return 0


# ----------------------------------------------------------------------------- files

# The zip comment of every .npz `recur run` writes: an existing file that carries it may be
# replaced by a later run; any other existing file only with --force.
_NPZ_MARK = b"written by recur run"


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _refuse_protected(path: str, flag: str, protected: Sequence[tuple[str, str]]) -> None:
    """Never write over the .rec file or an input, whatever the flags."""
    for other, what in protected:
        if other and _same_file(path, other):
            raise RecurError(f"{flag} {path} is {what}; recur never overwrites its inputs or "
                             "the .rec file (not even with --force): choose another path.")


def _atomic_write(path: str, flag: str, write) -> None:
    """Write through a temporary file in the target folder, then rename it into place;
    errors name the path the user gave, never the temporary file."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise RecurError(f"cannot write {flag} {path}: it is a folder; give a file name.")
    if not os.path.isdir(folder):
        raise RecurError(f"cannot write {flag} {path}: the folder {folder} does not exist.")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                                   suffix=".tmp")
    except OSError as exc:
        raise RecurError(f"cannot write {flag} {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes it private; a normal file instead
        os.replace(tmp, path)
    except OSError as exc:
        raise RecurError(f"cannot write {flag} {path}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_write_text(path: str, text: str, flag: str = "") -> None:
    _atomic_write(path, flag or "", lambda fh: fh.write(text.encode("utf-8")))


def _written_by_recur(path: str) -> bool:
    import zipfile
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.comment == _NPZ_MARK
    except (OSError, zipfile.BadZipFile):
        return False


def _write_npz(path: str, arrays: dict[str, Any]) -> None:
    """An .npz any declared name round-trips through (``np.savez`` takes ``file`` and
    ``allow_pickle`` as its own parameters), marked as written by ``recur run``."""
    import zipfile

    import numpy as np

    def write(fh):
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, value in arrays.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
            zf.comment = _NPZ_MARK
    _atomic_write(path, "--out", write)


def _read_npz(path: str | None, flag: str, what: str, declared: Sequence[str],
              dtype: Any) -> dict[str, Any] | None:
    """The arrays of an .npz the user gave; clear errors for a missing file, a .npy, a
    non-numeric array, or complex values the model's dtype would drop."""
    if path is None:
        return None
    import zipfile

    import numpy as np
    names = ", ".join(declared) or "none"
    if not os.path.exists(path):
        raise RecurError(f"{flag} {path}: no such file.")
    if os.path.isdir(path):
        raise RecurError(f"{flag} {path} is a folder; give an .npz file.")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            is_npy = fh.read(6) == b"\x93NUMPY"
        kind = "a .npy file (one array without a name)" if is_npy else "not an .npz file"
        example = ", ".join(f"{n}=..." for n in declared) or "..."
        raise RecurError(f"{flag} {path} is {kind}; recur run reads an .npz with one array "
                         f"per declared {what} ({names}), e.g. numpy.savez('file.npz', "
                         f"{example}).")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input
        raise RecurError(f"cannot read {flag} {path}: {exc}") from None
    complex_ok = np.dtype(dtype).kind == "c"
    for k, v in arrays.items():
        if v.dtype.kind == "c" and not complex_ok:
            raise RecurError(f"{flag} {path}: array {k!r} is complex ({v.dtype}) but the "
                             f"recurrence computes in {np.dtype(dtype).name}; recur run does "
                             "not drop imaginary parts: give real arrays (or split real and "
                             "imaginary parts into two declared names).")
        if v.dtype.kind not in "biufc":
            raise RecurError(f"{flag} {path}: array {k!r} has dtype {v.dtype}, not numbers.")
    return arrays


def _check_names(arrays: dict, declared: dict, flag: str, path: str, what: str, model,
                 missing_hint: str) -> None:
    missing = [k for k in declared if k not in arrays]
    unknown = sorted(k for k in arrays if k not in declared)
    names = ", ".join(declared) or "none"
    if missing:
        raise RecurError(f"{flag} {path} has no {what} {', '.join(missing)}; recurrence "
                         f"{model.name!r} declares {what}s {names}{missing_hint}.")
    if unknown:
        raise RecurError(f"{flag} {path} holds {', '.join(unknown)}, which recurrence "
                         f"{model.name!r} does not declare; its {what}s are {names}.")


# ----------------------------------------------------------------------------- checks

def _tolerance(dtype) -> float:
    """--check's tolerance on |recur - loop| / (1 + |loop|): the square root of the
    dtype's machine epsilon (3.5e-4 for float32, 1.5e-8 for float64); 0 for integers."""
    import numpy as np
    dtype = np.dtype(dtype)
    if dtype.kind in "fc":
        return float(np.sqrt(np.finfo(dtype).eps))
    return 0.0


def _first_nonfinite(a) -> tuple[int, str] | None:
    """(first step, "NaN"/"inf"/"NaN and inf") of the non-finite values of a (T, ...)
    array, or None when all are finite."""
    import numpy as np
    a = np.asarray(a)
    if a.dtype.kind not in "fc" or a.size == 0:
        return None
    bad = ~np.isfinite(a)
    if not bad.any():
        return None
    steps = bad.reshape(a.shape[0], -1).any(axis=1) if a.ndim else bad.reshape(1)
    kinds = [k for k, m in (("NaN", np.isnan(a)), ("inf", np.isinf(a))) if m.any()]
    return int(np.argmax(steps)), " and ".join(kinds)


def _compare(a, b) -> dict[str, Any]:
    """NaN-aware comparison of a result ``a`` with the loop's ``b`` (same shape): equal
    non-finite values agree; a non-finite value against anything else disagrees."""
    import numpy as np
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "c" or b.dtype.kind == "c":      # compare real and imaginary parts
        a = np.stack([a.real, a.imag], axis=-1)
        b = np.stack([b.real, b.imag], axis=-1)
    a64 = a.astype(np.float64) if a.dtype.kind in "biuf" else a
    b64 = b.astype(np.float64) if b.dtype.kind in "biuf" else b
    fa, fb = np.isfinite(a64), np.isfinite(b64)
    both = fa & fb
    same_nonfinite = ~fa & ~fb & ((a64 == b64) | (np.isnan(a64) & np.isnan(b64)))
    mismatch = ~both & ~same_nonfinite
    diff = np.zeros(a64.shape)
    np.subtract(a64, b64, out=diff, where=both)
    diff = np.abs(diff)
    scaled = np.zeros(a64.shape)
    np.divide(diff, 1.0 + np.abs(np.where(both, b64, 0.0)), out=scaled, where=both)
    out = {"max_abs": float(diff.max(initial=0.0)), "max_scaled": float(scaled.max(initial=0.0)),
           "worst_step": None, "mismatches": int(mismatch.sum()), "mismatch_step": None}
    if a64.ndim and a64.size:
        out["worst_step"] = int(np.argmax(diff.reshape(a64.shape[0], -1).max(axis=1)))
        if out["mismatches"]:
            idx = np.unravel_index(int(np.argmax(mismatch)), a64.shape)
            out["mismatch_step"] = int(idx[0])
            out["mismatch_values"] = (a64[idx].item(), b64[idx].item())
    return out


def _info_summary(info) -> tuple[float, bool, bool]:
    """(largest residual, converged everywhere, fell back anywhere) of an ``info``,
    whatever its shape (per stage for staged plans)."""
    import numpy as np
    res = np.asarray(info.residual, np.float64)
    residual = float(np.nanmax(res)) if res.size and not np.isnan(res).all() else float("nan")
    return residual, bool(np.all(np.asarray(info.converged))), \
        bool(np.any(np.asarray(info.fell_back)))


def _warn(text: str) -> None:
    print(f"recur: warning: {text}", file=sys.stderr)


# ----------------------------------------------------------------------------- run

def cmd_run(args) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    if args.length is not None and args.length < 0:
        raise RecurError(f"--length must be 0 or more, got {args.length}.")

    # where the result goes, decided (and refused) before any work
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

    rec = _load(args)
    model = rec.model
    dtype = model.dtype
    xs = _read_npz(args.inputs, "--inputs", "input", list(model.inputs), dtype)
    params = _read_npz(args.params, "--params", "param", list(model.params), dtype)
    init = _read_npz(args.init, "--init", "state", list(model.states), dtype)
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
    if params is not None:
        unknown = sorted(k for k in params if k not in model.params)
        if unknown:
            raise RecurError(f"--params {args.params} holds {', '.join(unknown)}, which "
                             f"recurrence {model.name!r} does not declare; its params are "
                             f"{', '.join(model.params) or 'none'}.")
    if init is not None:
        _check_names(init, model.states, "--init", args.init, "state", model,
                     " (give every state, or leave out --init to start from the file's "
                     "initial values)")
        for k, shape in model.states.items():
            if tuple(init[k].shape) != tuple(shape):
                raise RecurError(f"--init {args.init}: state {k!r} has shape "
                                 f"{tuple(init[k].shape)}; recurrence {model.name!r} declares "
                                 f"{tuple(shape)}.")
        h0 = {k: jnp.asarray(init[k], dtype) for k in model.states}
    else:
        h0 = rec.init(params)
    if xs is not None:
        xs = {k: jnp.asarray(v, dtype) for k, v in xs.items()}
    length = None if xs is not None else args.length
    for flag, arrays in (("--inputs", xs), ("--params", params), ("--init", init)):
        for k, v in (arrays or {}).items():
            bad = _first_nonfinite(np.asarray(v)) if flag == "--inputs" else \
                ((0, "NaN/inf") if not np.all(np.isfinite(np.asarray(v))) else None)
            if bad is not None:
                _warn(f"{flag} array {k!r} holds non-finite values ({bad[1]})"
                      + (f", first at step {bad[0]}" if flag == "--inputs" else ""))

    print(f"running {model.name!r} (method {args.method}; compiling first)", flush=True)
    start = time.perf_counter()
    hs, info = rec.scan(h0, xs, params, length=length, method=args.method, return_info=True)
    hs = jax.tree_util.tree_map(np.asarray, jax.block_until_ready(hs))
    elapsed = time.perf_counter() - start
    residual, converged, fell_back = _info_summary(info)
    print(f"ran {model.name!r} with method {info.method} in {elapsed:.3f} s, compiling "
          f"included (residual {residual:.3g}, converged: {'yes' if converged else 'no'}, "
          f"fell back: {'yes' if fell_back else 'no'})")

    ref = None
    if args.check:
        print("running the sequential loop for --check", flush=True)
        ref = rec.scan(h0, xs, params, length=length, method="sequential")
        ref = {k: np.asarray(v) for k, v in ref.items()}
    status = 0
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
    if ref is not None:
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
            k, c, tol = worst
            where = f"state {k!r}" + (f", step {c['worst_step']}" if c["worst_step"] is not None
                                      else "")
            print(f"check: largest difference to the sequential loop {c['max_abs']:.3g} "
                  f"({where}; over the values finite in both); tolerance |recur - loop| <= "
                  f"{tol:.2g} x (1 + |loop|), the square root of the machine epsilon of "
                  f"{np.dtype(hs[k].dtype).name}")
        if failed:
            print("check: FAILED: " + "; ".join(failed))
            status = 1
        else:
            print("check: passed (equal non-finite values count as agreement)"
                  if any(_first_nonfinite(v) for v in hs.values()) else "check: passed")

    outputs = {}
    if model.outputs:  # the declared per-step outputs, through recur.lax.scan
        _, ys = rec.lax_scan(h0, xs, params, length=length, method=args.method)
        outputs = {k: np.asarray(v) for k, v in jax.block_until_ready(ys).items()}
        for k, v in outputs.items():
            bad = _first_nonfinite(v)
            if bad is not None:
                _warn(f"output {k!r} holds non-finite values ({bad[1]}); the first appears at "
                      f"step {bad[0]} (0-based) of {v.shape[0]}")
    _write_npz(out_path, {**hs, **outputs})
    print(f"{'replaced' if replacing else 'wrote'} {os.path.abspath(out_path)} "
          f"(states {', '.join(hs)}"
          + (f"; outputs {', '.join(outputs)}" if outputs else "") + ")")
    return status


# ----------------------------------------------------------------------------- bench

def _bench_params(rec, rng):
    import jax.numpy as jnp
    out = {}
    for name, shape in rec.model.params.items():
        default = rec.model.param_defaults.get(name)
        if default is not None:
            out[name] = jnp.asarray(default, rec.model.dtype)
        else:
            fan_in = shape[-1] if shape else 1
            out[name] = jnp.asarray(rng.standard_normal(shape) / max(fan_in, 1) ** 0.5,
                                    rec.model.dtype)
    return out


def _times_fmt(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def _speed(seq_s: float | None, t_s: float, is_reference: bool) -> str:
    """``3.2× faster`` / ``200× slower`` than the sequential loop (never ``0.00x``)."""
    if is_reference:
        return "1× (reference)"
    if not seq_s or not t_s:
        return "-"
    r = seq_s / t_s
    return f"{_times_fmt(r)}× faster" if r >= 1 else f"{_times_fmt(1 / r)}× slower"


_BENCH_COLS = (("method", 12), ("ran", 12), ("median ms", 10), ("min ms", 10),
               ("max ms", 10), ("compile s", 9), ("residual", 9), ("fell back", 9),
               ("max |diff|", 10), ("vs sequential", 0))


def _bench_row(cells: Sequence[str]) -> str:
    return " ".join(c.ljust(w) if w else c for c, (_, w) in zip(cells, _BENCH_COLS)).rstrip()


def _bench_methods(args) -> list[str]:
    """The methods to compare: the loop first (the reference of the difference and speed
    columns), ``auto`` last."""
    from . import _methods
    known = _methods.names()
    methods = ([m.strip() for m in args.methods.split(",") if m.strip()] if args.methods
               else [m for m in known if m != "auto"])
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise RecurError(f"unknown method(s) {', '.join(unknown)}; recur has "
                         f"{', '.join(known)}.")
    return ["sequential"] + [m for m in dict.fromkeys(methods)
                             if m not in ("sequential", "auto")] + ["auto"]


def _bench_one(rec, m, run, reps, reference, seq_s):
    """One method's record (or ``None`` when it does not apply), printed as it finishes;
    ``reference``: the loop's leaves, ``seq_s``: its median time."""
    import jax
    import numpy as np

    print(f"{m:<{_BENCH_COLS[0][1]}} ", end="", flush=True)   # which one is running
    try:
        rec.plan(length=run["T"], method=m)          # shapes suffice to know if it applies
    except RecurError as exc:
        print(f"not applicable: {exc}", flush=True)
        return None
    try:
        fn = jax.jit(lambda xs: rec.scan(run["h0"], xs, run["params"], length=run["length"],
                                         method=m, return_info=True))
        start = time.perf_counter()
        hs, info = jax.block_until_ready(fn(run["xs"]))
        compile_s = time.perf_counter() - start
        times = [_time(fn, run["xs"]) for _ in range(reps)]
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one method failing does not end the bench
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"failed: {type(exc).__name__}: {msg[:300]}", flush=True)
        return {"method": m, "error": f"{type(exc).__name__}: {msg}"}
    leaves = [np.asarray(v) for v in jax.tree_util.tree_leaves(hs)]
    cmp = [_compare(a, b) for a, b in zip(leaves, reference or leaves)]
    diff = max((c["max_abs"] for c in cmp), default=0.0)
    mismatches = sum(c["mismatches"] for c in cmp)
    residual, _, fell_back = _info_summary(info)
    med = float(np.median(times))
    seq_s = med if m == "sequential" else seq_s
    r = {"method": m, "ran": info.method, "median_s": med, "min_s": float(np.min(times)),
         "max_s": float(np.max(times)), "compile_s": compile_s, "residual": residual,
         "fell_back": fell_back, "max_abs_diff": diff, "nonfinite_mismatches": mismatches,
         "speedup_vs_sequential": (seq_s / med) if seq_s else None, "_leaves": leaves}
    cells = ["", r["ran"], f"{med * 1e3:.3f}", f"{r['min_s'] * 1e3:.3f}",
             f"{r['max_s'] * 1e3:.3f}", f"{compile_s:.2f}", f"{residual:.2e}",
             "yes" if fell_back else "no",
             f"{diff:.2e}" + (f" ({mismatches} non-finite disagree)" if mismatches else ""),
             _speed(seq_s, med, m == "sequential")]
    print(_bench_row(cells)[_BENCH_COLS[0][1] + 1:], flush=True)   # after the name
    return r


def cmd_bench(args) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    if args.reps < 1:
        raise RecurError(f"--reps must be at least 1 (the timed runs after the first, "
                         f"compiling run), got {args.reps}.")
    if args.length < 1:
        raise RecurError(f"--length must be at least 1, got {args.length}.")
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path:
            _refuse_protected(path, flag, [(args.file, "the .rec file")])
    methods = _bench_methods(args)

    rec = _load(args)
    rng = np.random.default_rng(args.seed)
    T = args.length
    params = _bench_params(rec, rng)
    xs = {k: jnp.asarray(0.5 * rng.standard_normal((T,) + tuple(s)), rec.model.dtype)
          for k, s in rec.model.inputs.items()} or None
    run = {"T": T, "h0": rec.init(params), "xs": xs, "params": params,
           "length": None if xs else T}
    device = jax.devices()[0]
    print(f"recur bench {rec.model.name}: T={T}, {device.platform} ({device.device_kind}), "
          f"{args.reps} timed run(s) per method after a compiling run; differences and speed "
          "against the sequential loop", flush=True)
    print(_bench_row([c for c, _ in _BENCH_COLS]), flush=True)
    records, reference, seq_s = [], None, None
    for m in methods:
        r = _bench_one(rec, m, run, args.reps, reference, seq_s)
        if r is None:
            continue
        leaves = r.pop("_leaves", None)
        if leaves is not None and reference is None:
            reference = leaves
        if m == "sequential" and "median_s" in r:
            seq_s = r["median_s"]
        records.append(r)
    if args.json:
        _atomic_write_text(args.json, json.dumps({"device": device.device_kind,
                                                  "platform": device.platform, "T": T,
                                                  "reps": args.reps, "records": records},
                                                 indent=1), "--json")
        print(f"wrote {args.json}")
    if args.plot:
        timed = [r for r in records if "median_s" in r]
        _bench_plot(timed, args.plot, f"{rec.model.name}, T={T}, {device.platform}")
        print(f"wrote {args.plot}")
    return 0


def _bench_plot(records, path: str, title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RecurError("--plot needs matplotlib: pip install 'recur[plot]'") from None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [r["method"] for r in records]
    ax.bar(names, [r["median_s"] * 1e3 for r in records],
           yerr=[[(r["median_s"] - r["min_s"]) * 1e3 for r in records],
                 [(r["max_s"] - r["median_s"]) * 1e3 for r in records]], capsize=4)
    ax.set_ylabel("median time per call (ms)")
    ax.set_title(title)
    fig.tight_layout()
    _atomic_write(path, "--plot", lambda fh: fig.savefig(fh, dpi=120, format="png"))
    plt.close(fig)


# ----------------------------------------------------------------------------- demo

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0}


def _seconds(value: Any) -> float | None:
    """A predicted time from a plan's estimates (``'243 us'``, or a number of seconds)."""
    import re
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = re.fullmatch(r"\s*([0-9.]+(?:[eE][+-]?[0-9]+)?)\s*(ns|us|µs|μs|ms|s)\s*", str(value))
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def _predicted(plan) -> float | None:
    """The cost model's predicted time of a plan (its stages' sum), None if not given."""
    total = 0.0
    for st in plan.stages:
        t = _seconds(dict(st.estimates).get("predicted time"))
        if t is None:
            return None
        total += t
    return total


def _two_digits(x: float) -> str:
    """A predicted ratio to two significant digits (3292.1 -> '3300')."""
    x = float(f"{x:.2g}")
    return f"{x:.0f}" if x >= 10 else f"{x:g}"


def _duration(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def cmd_demo(args) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ._api import plan as make_plan
    from ._api import scan
    from .passes import _cost

    T, D, reps = args.length, 64, 5
    if T < 1:
        raise RecurError(f"--length must be at least 1, got {T}.")
    rng = np.random.default_rng(0)
    decay = jnp.asarray(rng.uniform(0.9, 0.999, D), jnp.float32)
    xs = jnp.asarray(rng.standard_normal((T, D)), jnp.float32)

    def step(h, x):
        # A gated linear recurrence (an LRU/EMA-style layer): affine in h, diagonal.
        gate = jax.nn.sigmoid(x)
        return decay * gate * h + (1 - gate) * x

    h0 = jnp.zeros(D, jnp.float32)
    device = jax.devices()[0]
    print("recur demo: a gated linear recurrence (an LRU/EMA-style layer)\n"
          "  h' = decay * g * h + (1 - g) * x,  g = sigmoid(x)\n"
          f"  T = {T} steps, D = {D} states, float32; this machine: {device.platform} "
          f"({device.device_kind})", flush=True)

    # 1. what `auto` runs here, next to the user's own jitted lax.scan
    here = make_plan(step, h0, xs)
    print(f"\n1. Here ({here.backend}) method='auto' runs: {here.method}")
    for st in here.stages:
        print(f"   why: {st.why}")
    run_auto = jax.jit(lambda xs: scan(step, h0, xs, return_info=True))
    run_loop = jax.jit(lambda xs: jax.lax.scan(lambda h, x: (step(h, x),) * 2, h0, xs)[1])
    (hs, info), ref = jax.block_until_ready((run_auto(xs), run_loop(xs)))   # compile both
    t_auto, t_loop = float("inf"), float("inf")
    for _ in range(reps):                           # interleaved: both see the same load
        t_auto = min(t_auto, _time(run_auto, xs))
        t_loop = min(t_loop, _time(run_loop, xs))
    print(f"   time (min of {reps} runs each, same process): recur.scan {_duration(t_auto)}, "
          f"your own jitted jax.lax.scan {_duration(t_loop)}")
    if here.method == "sequential":
        print("   (auto runs the same loop here, so the two should be about equal: on this "
              "backend recur costs nothing and gains nothing)")

    # 2. the plan a GPU would run, with the cost model's predicted speed-up and why
    gpu = make_plan(step, h0, xs, backend="gpu")
    source = _cost.constants("gpu").source
    assumed = "assumed" in source.lower()
    print(f"\n2. On a GPU, method='auto' would run: {gpu.method}"
          + ("  [PREDICTION from assumed GPU constants, not measured on a GPU]" if assumed
             else "  [prediction from the cost model's GPU constants]"))
    for st in gpu.stages:
        print(f"   why: {st.why}")
    t_gpu = _predicted(gpu)
    t_gpu_loop = _predicted(make_plan(step, h0, xs, backend="gpu", method="sequential"))
    if t_gpu and t_gpu_loop:
        r = t_gpu_loop / t_gpu
        depth = [dict(st.estimates).get("depth") for st in gpu.stages]
        depth = f"depth {sum(depth)}" if all(isinstance(d, int) for d in depth) else "less depth"
        print(f"   predicted: {gpu.method} {_duration(t_gpu)} against the sequential loop "
              f"{_duration(t_gpu_loop)}, about {_two_digits(max(r, 1 / r))}× "
              f"{'faster' if r >= 1 else 'slower'} (the loop runs {T} dependent steps, each "
              f"at least a kernel launch on a GPU; the {gpu.method} has {depth})")
    print(f"   GPU constants: {source}")

    # 2b. training: under jax.grad the plan counts the reverse pass, on this machine too
    print("\n2b. Training (jax.grad through the recurrence): the plan counts the reverse pass")
    trained = make_plan(step, h0, xs, for_grad=True)
    print(f"   here method='auto' under jax.grad runs: {trained.method}")
    for st in trained.stages:
        print(f"   why: {st.why}")
    grad_auto = jax.jit(jax.grad(lambda xs: jnp.sum(scan(step, h0, xs) ** 2)))
    grad_loop = jax.jit(jax.grad(lambda xs: jnp.sum(jax.lax.scan(
        lambda h, x: (step(h, x),) * 2, h0, xs)[1] ** 2)))
    g_auto, g_loop = jax.block_until_ready((grad_auto(xs), grad_loop(xs)))
    tg_auto, tg_loop = float("inf"), float("inf")
    for _ in range(reps):
        tg_auto = min(tg_auto, _time(grad_auto, xs))
        tg_loop = min(tg_loop, _time(grad_loop, xs))
    r = tg_loop / tg_auto
    print(f"   time of the gradient (min of {reps}): recur {_duration(tg_auto)}, your own "
          f"jax.lax.scan {_duration(tg_loop)}: recur {_two_digits(max(r, 1 / r))}× "
          f"{'faster' if r >= 1 else 'slower'} on this machine")
    g_err = float(np.max(np.abs(np.asarray(g_auto) - np.asarray(g_loop))))
    g_ok = bool(g_err <= _tolerance(np.float32) * (1 + float(np.max(np.abs(np.asarray(g_loop))))))
    print(f"   max |gradient - loop's gradient| = {g_err:.2e}: {'passed' if g_ok else 'FAILED'}")

    # 3. the correctness check against the loop, for what ran here and for the GPU's method
    print("\n3. Check against the sequential loop (jax.lax.scan):")
    tol = _tolerance(np.float32)
    runs = [("auto here", here.method, hs, info)]
    if gpu.method != here.method:
        run_gpu = jax.jit(lambda xs: scan(step, h0, xs, method=gpu.method, return_info=True))
        hs_gpu, info_gpu = jax.block_until_ready(run_gpu(xs))
        runs.append(("the GPU's method, run here", gpu.method, hs_gpu, info_gpu))
    ok = True
    ref = np.asarray(ref)
    for label, method, out, inf in runs:
        c = _compare(np.asarray(out), ref)
        _, converged, fell_back = _info_summary(inf)
        good = not c["mismatches"] and c["max_scaled"] <= tol and (converged or fell_back)
        ok &= good
        mism = f", {c['mismatches']} non-finite value(s) disagree" if c["mismatches"] else ""
        print(f"   {label} ({method}): max |recur - loop| = {c['max_abs']:.2e}{mism}; "
              f"converged {converged}, fell back {fell_back}: "
              f"{'passed' if good else 'FAILED'}")
    print(f"   (tolerance |recur - loop| <= {tol:.2g} x (1 + |loop|), the square root of "
          "float32's machine epsilon)")
    return 0 if ok and g_ok else 1


def _time(fn, *args) -> float:
    import jax
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recur", description="A compiler for recurrences.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_file(p):
        p.add_argument("file", help="the .rec file")
        p.add_argument("--name", help="which recurrence of a file that holds several")
        p.add_argument("--dim", action="append", metavar="NAME=VALUE",
                       help="override a dim (repeatable)")
        return p

    p = with_file(sub.add_parser("check", help="parse and check a .rec file"))
    p.set_defaults(func=cmd_check)
    p = with_file(sub.add_parser("explain", help="show the plan"))
    p.add_argument("--length", type=int, default=1024, help="T (default 1024)")
    p.add_argument("--backend", choices=["cpu", "gpu", "tpu"], default=None)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="the plan as JSON")
    g.add_argument("--dot", action="store_true", help="the state graph in Graphviz dot")
    g.add_argument("--passes", action="store_true", help="every analysis pass's output")
    p.set_defaults(func=cmd_explain)
    p = with_file(sub.add_parser("compile", help="emit a standalone JAX module"))
    p.add_argument("-o", "--output", help="write here instead of stdout")
    p.set_defaults(func=cmd_compile)
    p = with_file(sub.add_parser("run", help="run a recurrence on npz inputs"))
    p.add_argument("--inputs", help="npz with one array per declared input (leading axis T)")
    p.add_argument("--params", help="npz with params (defaults from the file otherwise)")
    p.add_argument("--init", help="npz with initial states (the file's otherwise)")
    p.add_argument("--length", type=int, help="T when the file declares no inputs")
    p.add_argument("--method", default="auto")
    p.add_argument("--check", action="store_true", help="compare with the sequential loop")
    p.add_argument("--out", help="output npz (default: FILE.out.npz in the current directory)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out file recur did not write (never an input "
                        "or the .rec file)")
    p.set_defaults(func=cmd_run)
    p = with_file(sub.add_parser("bench", help="compare methods on a .rec recurrence"))
    p.add_argument("--length", type=int, default=10_000, help="T (default 10000)")
    p.add_argument("--methods", help="comma-separated (default: every method that applies)")
    p.add_argument("--reps", type=int, default=5,
                   help="timed runs per method after the compiling run (at least 1; default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the records here")
    p.add_argument("--plot", help="write a bar chart (PNG) here")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("demo", help="what recur runs here and on a GPU, timed and checked")
    p.add_argument("--length", type=int, default=100_000, help="T (default 100000)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RecurError as exc:
        print(f"recur: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as exc:
        print(f"recur: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("recur: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the command never ends in a traceback
        print(f"recur: internal error ({type(exc).__name__}): {exc}\n"
              "This is a bug in recur; please report it with the command you ran.",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
