"""The files ``recur`` reads and writes: ``.npz`` arrays keyed by declared names, and
writes that never replace the ``.rec`` file or an input and go through a temporary file
in the target folder, renamed into place.

An ``.npz`` that ``recur run`` writes carries a zip comment; an existing file without it
is replaced only with ``--force``."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

from .._errors import RecurError

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



__all__ = ["_NPZ_MARK", "_same_file", "_refuse_protected", "_atomic_write",
           "_atomic_write_text", "_written_by_recur", "_write_npz", "_read_npz",
           "_check_names"]
