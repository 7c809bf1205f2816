"""The `recur` command, run for real in a subprocess."""

import json
import subprocess
import sys
import pathlib

import numpy as np

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "recur", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_demo_parallelises_an_affine_recurrence():
    r = run("demo", "--length", "2000")
    assert r.returncode == 0, r.stderr
    assert "scan" in r.stdout and "max |scan - lax.scan loop|" in r.stdout


def test_check_exit_codes(tmp_path):
    assert run("check", str(EXAMPLES / "ema.rec")).returncode == 0
    bad = tmp_path / "bad.rec"
    bad.write_text("recurrence r\nstate h = 0\nh' = h +\n")
    r = run("check", str(bad))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "line 3" in r.stderr


def test_explain_json_and_run_check_round_trip(tmp_path):
    r = run("explain", str(EXAMPLES / "ema.rec"), "--json", "--length", "16", "--backend", "gpu")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["method"] == "scan"
    xs = tmp_path / "x.npz"
    np.savez(xs, x=np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))
    out = tmp_path / "out.npz"
    r = run("run", str(EXAMPLES / "ema.rec"), "--inputs", str(xs), "--check", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "largest difference" in r.stdout
    with np.load(out) as data:
        assert data["h"].shape == (16, 8)
    r = run("run", str(EXAMPLES / "ema.rec"), "--inputs", str(xs), "--out", str(xs))
    assert r.returncode == 1 and "never overwrites" in r.stderr


def test_bench_table_json_and_plot(tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    r = run("bench", str(EXAMPLES / "ema.rec"), "--length", "200", "--reps", "1",
            "--methods", "sequential,scan", "--json", str(out_json), "--plot", str(out_png))
    assert r.returncode == 0, r.stderr
    assert "recur bench ema" in r.stdout and "fell back" in r.stdout
    records = json.loads(out_json.read_text())["records"]
    assert [rec["method"] for rec in records] == ["sequential", "scan", "auto"]
    assert all(rec["max_abs_diff"] < 1e-5 for rec in records)
    assert out_png.stat().st_size > 1000
