"""The trace cache: an eager call of the same step on the same shapes skips re-tracing.

Tracing a step costs a few milliseconds (the user's Python runs once per trace), more than
the compiled program of a short recurrence.  ``jax.jit`` avoids it by caching on the
function's identity, and therefore serves stale results when a global or a closed-over
array the function reads is replaced.  recur promises never to do that, so its cache key
is a *fingerprint* of everything the step can read:

* for a function: its code, defaults, the contents of its closure cells and the globals
  its code (and any nested code) names -- recursively, so a helper function's own globals
  and closures count too;
* ``functools.partial`` arguments, a bound method's object, a callable object's
  attributes, and the items of lists, tuples and dicts;
* JAX arrays by identity (they are immutable; the cache keeps them alive, so an identity is
  never reused while its entry exists), NumPy arrays by their bytes (they can change in
  place), numbers and strings by value, modules and classes by identity.

If the fingerprint meets an object it cannot see into (a ``__slots__`` object, a C
extension type) or grows beyond ``_BUDGET`` objects, the step is simply traced again:
the cache is only ever a shortcut.  The step's behaviour may still depend on state no
fingerprint can see -- a random generator's, the clock, a file -- exactly as for
``jax.jit``; such steps are not recurrences in the first place.
"""

from __future__ import annotations

import collections
import functools
import types
from typing import Any

import numpy as np

_BUDGET = 2000
_NUMPY_BYTES = 1 << 20
_SIZE = 128
_cache: "collections.OrderedDict[Any, Any]" = collections.OrderedDict()


class _Opaque(Exception):
    """The fingerprint cannot see into an object: do not cache."""


def _code_names(code: types.CodeType, out: set) -> None:
    out.update(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_names(const, out)


class _Fingerprint:
    def __init__(self):
        self.seen: dict[int, int] = {}
        self.keep: list[Any] = []  # objects whose identity is in the key stay alive

    def __call__(self, obj: Any) -> Any:
        if len(self.seen) > _BUDGET:
            raise _Opaque
        if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
            return (type(obj).__name__, obj)
        key = id(obj)
        if key in self.seen:
            return ("seen", self.seen[key])
        self.seen[key] = len(self.seen)
        self.keep.append(obj)
        if isinstance(obj, (types.ModuleType, type, types.BuiltinFunctionType)):
            return ("id", key)
        if isinstance(obj, np.ndarray):
            if obj.nbytes > _NUMPY_BYTES or obj.dtype.hasobject:
                raise _Opaque
            return ("np", obj.shape, obj.dtype.str, obj.tobytes())
        if _is_jax_array(obj):
            return ("jax", key)
        if isinstance(obj, types.FunctionType):
            return self._function(obj)
        if isinstance(obj, types.MethodType):
            return ("method", self(obj.__func__), self(obj.__self__))
        if isinstance(obj, functools.partial):
            return ("partial", self(obj.func), self(obj.args), self(obj.keywords))
        if isinstance(obj, (tuple, list)):
            return (type(obj).__name__, tuple(self(v) for v in obj))
        if isinstance(obj, dict):
            return ("dict", tuple((self(k), self(v)) for k, v in obj.items()))
        if isinstance(obj, (set, frozenset)):
            return (type(obj).__name__, tuple(sorted(map(repr, obj))))
        if hasattr(obj, "__dict__") and not hasattr(type(obj), "__slots__"):
            return ("object", id(type(obj)), self(vars(obj)))
        raise _Opaque

    def _function(self, fn: types.FunctionType):
        names: set = set()
        _code_names(fn.__code__, names)
        glob = fn.__globals__
        read = tuple((n, self(glob[n])) for n in sorted(names) if n in glob)
        cells = tuple(self(c.cell_contents) if _filled(c) else ("empty",)
                      for c in (fn.__closure__ or ()))
        return ("function", id(fn.__code__), self(fn.__defaults__),
                self(fn.__kwdefaults__), cells, read)


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _jax_array_type():
    import jax
    return jax.Array


def _is_jax_array(obj) -> bool:
    return isinstance(obj, _jax_array_type())


def fingerprint(fn) -> tuple[Any, list] | None:
    """``(key, objects to keep alive)`` for ``fn``, or ``None`` when it cannot be seen."""
    fp = _Fingerprint()
    try:
        return fp(fn), fp.keep
    except (_Opaque, RecursionError):
        return None


def cached_trace(fn, signature: tuple, trace):
    """``trace()`` (a ``StepIR``), served from the cache when ``fn`` and ``signature`` (the
    shapes, dtypes and structures of the arguments) are unchanged."""
    found = fingerprint(fn)
    if found is None:
        return trace()
    key = (found[0], signature)
    entry = _cache.get(key)
    if entry is not None:
        _cache.move_to_end(key)
        return entry[0]
    ir = trace()
    _cache[key] = (ir, found[1])
    if len(_cache) > _SIZE:
        _cache.popitem(last=False)
    return ir


def clear() -> None:
    _cache.clear()


__all__ = ["cached_trace", "fingerprint", "clear"]
