"""The commands that read a ``.rec`` file without running it: ``check`` (is it valid),
``explain`` (the plan, as a table, JSON, Graphviz dot or every pass's output) and
``compile`` (a standalone JAX module)."""

from __future__ import annotations

import sys

from ._common import _console, _dims, _load
from ._files import _atomic_write, _refuse_protected


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
    from .._dsl import compile as compile_rec
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


__all__ = ["cmd_check", "cmd_explain", "cmd_compile"]
