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

One module a job: ``_main`` (the parser and ``main``), ``_static`` (check, explain,
compile), ``_run``, ``_bench``, ``_demo``, ``_files`` (``.npz`` reading and safe writes),
``_checks`` (comparison with the sequential loop), ``_common`` (console, loading, timing).
"""

from ._bench import _speed, cmd_bench
from ._demo import cmd_demo
from ._main import build_parser, main
from ._run import cmd_run
from ._static import cmd_check, cmd_compile, cmd_explain

__all__ = ["main", "build_parser", "cmd_check", "cmd_explain", "cmd_compile", "cmd_run",
           "cmd_bench", "cmd_demo", "_speed"]
