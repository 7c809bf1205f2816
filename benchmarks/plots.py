"""PNG plots of recorded benchmark results (matplotlib, the ``plot`` extra).

    python -m benchmarks.plots [--dir benchmarks/results] [--prefix cpu]

Reads ``<prefix>-baselines.json`` (and the workload suites' JSON files when present) and
writes, next to them:

* ``<prefix>-gru-speedup.png`` -- speed-up over the sequential ``lax.scan`` loop vs ``T``
  for every method on the ``gru`` reference problem (D = 8);
* ``<prefix>-gru-residuals.png`` -- residual ``max_t |h_t - f(h_{t-1})|`` vs iteration for
  recur's deer / quasi-deer, the minimal DEER / quasi-DEER and (when it ran) pararnn-torch;
* ``<prefix>-workloads.png`` -- time of every method relative to the loop, per workload.
"""

from __future__ import annotations

import argparse
import json
import os

STYLE = {"recur deer": ("C0", "-"), "deer": ("C0", "-"), "recur quasi-deer": ("C1", "-"),
         "quasi-deer": ("C1", "-"), "minimal deer": ("C0", "--"),
         "minimal quasi-deer": ("C1", "--"), "pararnn-torch deer": ("C4", ":"),
         "jacobi": ("C2", "-"), "sequential": ("k", "-"), "auto": ("C3", "-.")}


def _load(path):
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def _title_suffix(data) -> str:
    load = data.get("loadavg_start"), data.get("loadavg_end")
    la = "" if None in load else f", load {load[0][0]:.1f}->{load[1][0]:.1f}"
    return f"{data.get('cpu_model', data.get('device'))} ({data.get('platform')}, " \
           f"{data.get('cpu_count')} cores{la})"


def plot_speedup(data, path) -> bool:
    import matplotlib.pyplot as plt
    recs = [r for r in data["records"] if r.get("workload") == "gru-T" and "median_s" in r]
    if not recs:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in recs):
        if method == "lax.scan":
            continue
        pts = sorted((r["T"], r["speedup_vs_loop"]) for r in recs if r["method"] == method)
        c, ls = STYLE.get(method, (None, "-"))
        ax.plot(*zip(*pts), marker="o", color=c, ls=ls, label=method)
    ax.axhline(1.0, color="0.5", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("T (sequence length)")
    ax.set_ylabel("speed-up over the lax.scan loop (>1: faster)")
    D = recs[0].get("D")
    ax.set_title(f"GRU reference problem, D = {D}, float32, tol 1e-5\n{_title_suffix(data)}",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_residuals(data, path) -> bool:
    import matplotlib.pyplot as plt
    recs = [r for r in data["records"] if r.get("workload") == "gru" and r.get("history")
            and "(loop solve)" not in r["method"]]
    if not recs:
        return False
    Ds = sorted(dict.fromkeys(r["D"] for r in recs))
    fig, axes = plt.subplots(1, len(Ds), figsize=(max(7.0, 4.5 * len(Ds)), 4.4),
                             squeeze=False)
    for ax, D in zip(axes[0], Ds):
        for r in (r for r in recs if r["D"] == D):
            hist = [h for h in r["history"] if h is not None and h == h]
            c, ls = STYLE.get(r["method"], (None, "-"))
            ax.semilogy(range(len(hist)), [max(h, 1e-12) for h in hist], marker=".", color=c,
                        ls=ls, label=f"{r['method']} ({r['iterations']} it)")
        ax.axhline(recs[0].get("tol", 1e-5), color="0.5", lw=0.8, ls=":")
        ax.set_xlabel("iteration (linear solves; 0 = initial guess)")
        ax.set_ylabel("max_t |h_t - f(h_{t-1}, x_t)|")
        ax.set_title(f"GRU D = {D}, T = {recs[0]['T']}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"residual vs iteration (tolerance dotted)\n{_title_suffix(data)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_workloads(datas, path) -> bool:
    import matplotlib.pyplot as plt
    rows = []
    for data in datas:
        recs = [r for r in data["records"] if "speedup_vs_loop" in r
                and r.get("candidate") != "piece" and r["method"] != "lax.scan"]
        groups = {}
        for r in recs:
            key = (r["workload"], r.get("D"), r.get("T"))
            groups.setdefault(key, []).append(r)
        if groups:  # the largest size of each workload
            by_w = {}
            for key in groups:
                w = key[0]
                if w not in by_w or (key[2] or 0, key[1] or 0) > (by_w[w][2] or 0,
                                                                   by_w[w][1] or 0):
                    by_w[w] = key
            for key in by_w.values():
                rows.append((key, groups[key]))
    if not rows:
        return False
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.2 + 0.32 * sum(len(g) for _, g in
                                                                         rows)),
                             squeeze=False)
    for ax, ((w, D, T), recs) in zip(axes[:, 0], rows):
        names = [r["method"] for r in recs]
        vals = [1.0 / r["speedup_vs_loop"] for r in recs]
        colors = ["C3" if r.get("fell_back") else "C0" if r.get("candidate") == "recur"
                  else "C2" for r in recs]
        ax.barh(range(len(recs)), vals, color=colors)
        ax.set_yticks(range(len(recs)), names, fontsize=7)
        ax.set_xscale("log")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(f"{w}" + (f" D={D}" if D else "") + (f" T={T}" if T else "")
                     + "  (time / loop time; red: fell back to the loop; green: not recur)",
                     fontsize=8)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def make_plots(out_dir: str, prefix: str) -> list[str]:
    """Write every plot whose data is there; returns the paths written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install '.[plot]')")
        return []
    written = []
    base = _load(os.path.join(out_dir, f"{prefix}-baselines.json"))
    if base:
        for name, fn in (("gru-speedup", plot_speedup), ("gru-residuals", plot_residuals)):
            path = os.path.join(out_dir, f"{prefix}-{name}.png")
            if fn(base, path):
                written.append(path)
    datas = [d for d in (_load(os.path.join(out_dir, f"{prefix}-{s}.json"))
                         for s in ("heads", "kalman", "mcmc", "ddim")) if d]
    path = os.path.join(out_dir, f"{prefix}-workloads.png")
    if datas and plot_workloads(datas, path):
        written.append(path)
    for p in written:
        print(f"wrote {p}")
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--prefix", default=None, help="default: this machine's platform")
    args = ap.parse_args(argv)
    prefix = args.prefix
    if prefix is None:
        import jax
        prefix = jax.devices()[0].platform
    make_plots(args.dir, prefix)


if __name__ == "__main__":
    main()
