"""The example scripts run (--quick), agree with their sequential references, and plot.

Each script prints a final line ``AGREEMENT <name> <max_abs_difference>``: the largest
difference between recur's parallel method and the sequential loop (or numpy reference)
written in the script. The scripts run two at a time (this machine has 2 cores). Figures
go to a temporary folder (``--out``), never to the tracked ``examples/figures/``.
"""
import concurrent.futures
import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> tolerance on the AGREEMENT difference
SCRIPTS = {
    "train_gru": 1e-4,        # float32 gradients (largest entry ~0.6)
    "lru_layer": 1e-4,        # float32 / complex64 outputs
    "kalman_tracking": 1e-9,  # float64 (x64 enabled), against numpy and the loop
    "gated_linear_attention": 1e-4,  # float32 outputs up to ~40, and the .rec model
    "mamba2_ssd": 1e-4,       # float32 outputs up to ~60, chunked and auto vs lax.scan
    "multihead_rnn": 1e-4,    # float32 states; gradients relative to the largest entry
    "mala_banana": 1e-3,      # float32 chain: converged to rtol, values up to ~5
    "chaos": 1e-4,            # float32; the chaotic case falls back (exact)
    # float32 samples up to ~3; Picard/deer windows accept a step at residual
    # <= 1e-6 (1 + |x|), and those per-step errors add up over the T = 100 steps (~5e-4 seen)
    "diffusion_sampling": 5e-3,
    "hmc_logistic": 1e-8,     # float64 chains, converged to ~4e-11 (1 + |q|); fallbacks exact
    # float64; windowed deer accepts steps at residual <= 1e-12 (1 + |x|), which Lyapunov
    # growth (e^(0.0136 T) ~ 8e5 at T = 1000) amplifies to ~2e-6; whole-sequence runs fall back
    "lorenz96": 1e-4,
    # float32: log p(y) relative, posterior marginals (grad), Viterbi path (fraction differing)
    "hmm": 1e-4,
}


def _run(name, out_dir):
    start = time.time()
    proc = subprocess.run(
        [sys.executable, os.path.join("examples", name + ".py"), "--quick", "--out", out_dir],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    return proc, start


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    return str(tmp_path_factory.mktemp("figures"))


@pytest.fixture(scope="module")
def runs(request, figures):
    # only the scripts whose tests were selected (``-k``), two at a time
    selected = [item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_example_script"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_run, name, figures) for name in selected}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.xdist_group("example-scripts")  # one worker runs the fixture's batch
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_example_script(runs, figures, name):
    proc, start = runs[name]
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    m = re.search(rf"^AGREEMENT {name} (\S+)\s*$", proc.stdout, re.M)
    assert m, f"no AGREEMENT line in the output of {name}:\n{proc.stdout[-2000:]}"
    diff = float(m.group(1))
    assert diff <= SCRIPTS[name], f"{name}: difference {diff} above {SCRIPTS[name]}"
    assert "recur plan:" in proc.stdout                      # the plan was printed
    assert re.search(r"timing on \w+", proc.stdout)          # timings, device named
    png = os.path.join(figures, name + ".png")
    assert os.path.getsize(png) > 10_000
    assert os.path.getmtime(png) >= start - 1, f"{png} was not rewritten by this run"
