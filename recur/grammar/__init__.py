"""The ``.rec`` language front end: grammar, parser, AST, checks, sympy pass, codegen.

``parse`` gives the AST; ``load_model`` the checked, classified and compiled recurrence
(:class:`RecModel`); ``compile_source`` the standalone JAX module as text. Every failure is
a :class:`recur.DSLSyntaxError` (does not parse) or :class:`recur.DSLError`.
"""

from . import _ast as ast
from ._check import Checked, check
from ._model import RecModel, compile_source, load_model, recurrence_names
from ._parser import RESERVED, parse
from ._symbolic import Symbolic, build_symbolic

__all__ = [
    "parse",
    "load_model",
    "compile_source",
    "recurrence_names",
    "RecModel",
    "RESERVED",
    "ast",
    "check",
    "Checked",
    "build_symbolic",
    "Symbolic",
]
