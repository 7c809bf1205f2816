"""The `recur` command, run for real in subprocesses in a temporary working directory: exit
status, stdout/stderr text and the files it writes.

Starting Python with jax and recur costs seconds here, so the commands run in few processes:

- the central paths (``run`` with its default output, ``bench``, ``demo``) each run as
  ``python -m recur ...``;
- the many short cases (errors, refusals, special names, ``--check`` verdicts) run in one
  subprocess, a driver that calls ``recur.cli.main(argv)`` once per case with stdout and
  stderr captured, started in the background when the module starts so it overlaps the
  other tests. The driver can inject a fault per case (a wrong or non-finite parallel
  result, a method that raises, a slow method) by patching the library first: the
  command's own logic is what is under test.
"""

import json
import pathlib
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
EMA = str(EXAMPLES / "ema.rec")
TIMEOUT = 300

# Faults (a comma-separated list, per case):
#   offset - the result of every non-sequential run gets +0.01 at step 3
#   nan    - ... gets NaN at step 3
#   raise  - method "scan" raises RuntimeError("injected failure")
#   slow   - method "auto" takes 2 s longer
DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys, time
    import recur, recur._api
    from recur.cli import main

    FAULT = set()
    orig_dsl, orig_api = recur.DSLRecurrence.scan, recur._api.scan

    def perturb(out, method, with_info=True):
        if method == "sequential" or not FAULT & {"offset", "nan"}:
            return out
        import jax
        hs, info = out if with_info else (out, None)
        change = (lambda v: v.at[3].set(float("nan"))) if "nan" in FAULT else \\
            (lambda v: v.at[3].add(0.01))
        hs = jax.tree_util.tree_map(change, hs)
        return (hs, info) if with_info else hs

    def dsl_scan(self, *a, method=None, **k):
        if "raise" in FAULT and method == "scan":
            raise RuntimeError("injected failure")
        if "slow" in FAULT and method == "auto":
            time.sleep(2)
        return perturb(orig_dsl(self, *a, method=method, **k), method,
                       k.get("return_info", False))

    def api_scan(fn, *a, method="auto", **k):
        return perturb(orig_api(fn, *a, method=method, **k), method,
                       k.get("return_info", False))

    recur.DSLRecurrence.scan = dsl_scan
    recur._api.scan = api_scan
    if sys.argv[1] == "--batch":
        results = {}
        for name, fault, argv in json.load(open(sys.argv[2])):
            FAULT = set(fault.split(",")) - {""}
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(argv)
            results[name] = [rc, out.getvalue(), err.getvalue()]
        with open(sys.argv[3], "w") as fh:
            json.dump(results, fh)
    else:
        FAULT = set(sys.argv[1].split(",")) - {""}
        sys.exit(main(sys.argv[2:]))
""")


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "recur", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=TIMEOUT)


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def clean(r):
    assert "Traceback" not in r.stderr, r.stderr
    assert "Warning" not in r.stderr, r.stderr
    assert r.returncode == 0 or r.stderr.startswith("recur: error:") \
        or "check: FAILED" in r.stdout or "FAILED" in r.stdout, (r.stdout, r.stderr)


def write_inputs(path, T=16):
    np.savez(path, x=np.random.default_rng(0).standard_normal((T, 8)).astype(np.float32))
    return path


NAMES_REC = ("recurrence names\nstate file = 1\nstate allow_pickle = 2\n"
             "file' = 0.5 * file + 0.1 * allow_pickle\nallow_pickle' = 0.9 * allow_pickle\n")
BLOW_REC = "recurrence blow\nstate h = 1\nstate g = 1\nh' = h * 10\ng' = 0.5 * g\n"


def batch_cases(d):
    """(name, fault, argv) of every case the batch driver runs, in order, in folder d."""
    d = pathlib.Path(d)
    (d / "bad.rec").write_text("recurrence r\nstate h = 0\nh' = h +\n")
    (d / "m.rec").write_text((EXAMPLES / "ema.rec").read_text())
    (d / "names.rec").write_text(NAMES_REC)
    (d / "blow.rec").write_text(BLOW_REC)
    (d / "notes.txt").write_text("mine")
    xs = str(write_inputs(d / "x.npz"))
    np.save(d / "x.npy", np.zeros((16, 8), np.float32))
    np.savez(d / "xc.npz", x=np.ones((16, 8)) + 0.5j)
    np.savez(d / "init.npz", g=np.float32(1))
    np.savez(d / "bad.npz", y=np.zeros((16, 8)))
    np.savez(d / "other.npz", h=np.zeros(3))
    np.savez(d / "init_shape.npz", x=np.zeros(3, np.float32))
    x_nan = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    x_nan[2, 5] = np.nan
    np.savez(d / "x_nan.npz", x=x_nan)
    rng = np.random.default_rng(1)
    np.savez(d / "hmm_x.npz", logB=np.log(rng.uniform(0.1, 1.0, (12, 4))).astype(np.float32))
    np.savez(d / "hmm_p.npz", logA=np.log(rng.dirichlet(np.ones(4), size=4)).astype(np.float32))
    rec, logistic = str(d / "m.rec"), str(EXAMPLES / "logistic.rec")
    p = lambda name: str(d / name)  # noqa: E731
    return [
        ("check_ok", "", ["check", EMA]),
        ("check_bad", "", ["check", p("bad.rec")]),
        ("explain_gpu", "", ["explain", EMA, "--json", "--length", "16", "--backend", "gpu"]),
        # never the .rec file or an input, not even with --force
        ("out_rec", "", ["run", rec, "--inputs", xs, "--out", rec]),
        ("out_rec_force", "", ["run", rec, "--inputs", xs, "--out", rec, "--force"]),
        ("out_input", "", ["run", rec, "--inputs", xs, "--out", xs]),
        ("out_input_force", "", ["run", rec, "--inputs", xs, "--out", xs, "--force"]),
        # an existing file recur did not write needs --force; one it wrote is replaced
        ("out_notes", "", ["run", rec, "--inputs", xs, "--out", p("notes.txt")]),
        ("out_other_npz", "", ["run", rec, "--inputs", xs, "--out", p("other.npz")]),
        ("out_notes_force", "", ["run", rec, "--inputs", xs, "--out", p("notes.txt"),
                                 "--force"]),
        ("out_first", "", ["run", rec, "--inputs", xs, "--out", p("r.npz")]),
        ("out_again", "", ["run", rec, "--inputs", xs, "--out", p("r.npz")]),
        ("names", "", ["run", p("names.rec"), "--length", "5", "--out", p("n.npz")]),
        ("outputs", "", ["run", str(EXAMPLES / "hmm_forward.rec"), "--inputs", p("hmm_x.npz"),
                         "--params", p("hmm_p.npz"), "--out", p("hmm.npz")]),
        # input errors
        ("err_npy", "", ["run", EMA, "--inputs", p("x.npy"), "--out", p("e.npz")]),
        ("err_complex", "", ["run", EMA, "--inputs", p("xc.npz"), "--out", p("e.npz")]),
        ("err_unknown_input", "", ["run", EMA, "--inputs", p("bad.npz"), "--out", p("e.npz")]),
        ("err_no_inputs", "", ["run", EMA, "--out", p("e.npz")]),
        ("err_no_length", "", ["run", logistic, "--out", p("e.npz")]),
        ("err_init_missing", "", ["run", logistic, "--length", "4", "--init", p("init.npz"),
                                  "--out", p("e.npz")]),
        ("err_missing_file", "", ["run", EMA, "--inputs", p("missing.npz"),
                                  "--out", p("e.npz")]),
        ("err_init_shape", "", ["run", logistic, "--length", "4", "--init", p("init_shape.npz"),
                                "--out", p("e.npz")]),
        ("err_length", "", ["run", EMA, "--inputs", xs, "--length", "5", "--out", p("e.npz")]),
        # non-finite states, --check verdicts
        ("blow_check", "", ["run", p("blow.rec"), "--length", "60", "--check",
                            "--out", p("b.npz")]),
        ("blow", "", ["run", p("blow.rec"), "--length", "60", "--out", p("b.npz")]),
        ("nan_inputs", "", ["run", EMA, "--inputs", p("x_nan.npz"), "--check",
                            "--out", p("nan.npz")]),
        ("check_offset", "offset", ["run", EMA, "--inputs", xs, "--check", "--method", "scan",
                                    "--out", p("o.npz")]),
        ("check_nan", "nan", ["run", EMA, "--inputs", xs, "--check", "--method", "scan",
                              "--out", p("o.npz")]),
        # compile -o
        ("compile_missing_dir", "", ["compile", EMA, "-o", "/missing/dir/x.py"]),
        ("compile_over_rec", "", ["compile", rec, "-o", rec]),
        ("compile_ok", "", ["compile", rec, "-o", p("m.py")]),
        # bench and demo
        ("bench_reps0", "", ["bench", EMA, "--reps", "0"]),
        ("bench_unknown", "", ["bench", EMA, "--methods", "warp"]),
        ("bench_raise", "raise", ["bench", EMA, "--length", "100", "--reps", "1", "--methods",
                                  "scan", "--json", p("b.json")]),
        ("demo_nan", "nan", ["demo", "--length", "500"]),
    ]


@pytest.fixture(scope="module")
def batch_proc(tmp_path_factory):
    """Started at the first test, collected by the tests that need it."""
    d = tmp_path_factory.mktemp("batch")
    (d / "cases.json").write_text(json.dumps(batch_cases(d)))
    (d / "driver.py").write_text(DRIVER)
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    proc = subprocess.Popen([sys.executable, str(d / "driver.py"), "--batch",
                             str(d / "cases.json"), str(d / "results.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=d)
    yield proc, d, before
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def batch(batch_proc):
    proc, d, before = batch_proc
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, out + err
    results = json.loads((d / "results.json").read_text())
    return {k: Result(*v) for k, v in results.items()}, d, before


def test_start_the_batch(batch_proc):
    pass                                # first in the file: the batch runs while others do


# ----------------------------------------------------------------------------- run

def test_run_check_and_default_output_in_the_current_directory(tmp_path):
    xs = write_inputs(tmp_path / "x.npz")
    r = run("run", EMA, "--inputs", xs, "--check", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    clean(r)
    out = tmp_path / "ema.out.npz"                     # the cwd, not next to the .rec file
    assert not (EXAMPLES / "ema.out.npz").exists()
    assert f"wrote {out}" in r.stdout
    assert "largest difference to the sequential loop" in r.stdout
    assert "tolerance" in r.stdout and "float32" in r.stdout and "check: passed" in r.stdout
    with np.load(out) as data:
        assert data["h"].shape == (16, 8)
    with zipfile.ZipFile(out) as zf:
        assert zf.comment == b"written by recur run"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["ema.out.npz", "x.npz"]  # no temp


def test_check_and_explain(batch):
    res, d, _ = batch
    assert res["check_ok"].returncode == 0
    r = res["check_bad"]
    assert r.returncode == 1 and "line 3" in r.stderr
    clean(r)
    assert json.loads(res["explain_gpu"].stdout)["method"] == "scan"


def test_run_never_overwrites_the_rec_file_or_an_input(batch):
    res, d, before = batch
    for case in ("out_rec", "out_rec_force", "out_input", "out_input_force"):
        r = res[case]
        assert r.returncode == 1, (case, r.stdout)
        clean(r)
        assert "never overwrites" in r.stderr and "not even with --force" in r.stderr
    assert "is the .rec file" in res["out_rec"].stderr
    assert "is the --inputs file" in res["out_input"].stderr
    assert (d / "m.rec").read_bytes() == before["m.rec"]
    assert (d / "x.npz").read_bytes() == before["x.npz"]


def test_run_existing_file_needs_force(batch):
    res, d, before = batch
    for case in ("out_notes", "out_other_npz"):
        r = res[case]
        assert r.returncode == 1 and "--force" in r.stderr, (case, r.stderr)
        assert "not an .npz that recur run wrote" in r.stderr
        clean(r)
    assert (d / "other.npz").read_bytes() == before["other.npz"]
    r = res["out_notes_force"]                 # replaced only with --force
    assert r.returncode == 0, r.stderr
    assert f"replaced {d / 'notes.txt'}" in r.stdout
    with np.load(d / "notes.txt") as data:
        assert data["h"].shape == (16, 8)
    assert f"wrote {d / 'r.npz'}" in res["out_first"].stdout
    assert res["out_again"].returncode == 0                      # an .npz recur wrote
    assert f"replaced {d / 'r.npz'}" in res["out_again"].stdout
    assert not [f for f in d.iterdir() if f.name.endswith(".tmp")]


def test_run_any_state_name_round_trips(batch):
    res, d, _ = batch
    assert res["names"].returncode == 0, res["names"].stderr
    with np.load(d / "n.npz") as data:
        assert sorted(data.files) == ["allow_pickle", "file"]
        np.testing.assert_allclose(data["allow_pickle"], 2 * 0.9 ** np.arange(1, 6), rtol=1e-6)
        assert data["file"][0] == pytest.approx(0.5 + 0.2)


def test_run_writes_declared_outputs(batch):
    results, d, _ = batch
    r = results["outputs"]
    clean(r)
    assert r.returncode == 0 and "outputs loglik" in r.stdout
    with np.load(d / "hmm.npz") as out:
        assert out["alpha"].shape == (12, 4) and out["loglik"].shape == (12,)
        alpha = out["alpha"].astype(np.float64)
        top = alpha.max(axis=1)
        np.testing.assert_allclose(out["loglik"],
                                   top + np.log(np.exp(alpha - top[:, None]).sum(axis=1)),
                                   rtol=1e-5)


@pytest.mark.parametrize("case, needles", [
    ("err_npy", [".npy file", "numpy.savez", "x=...", "declared input (x)"]),
    ("err_complex", ["complex", "imaginary", "float32"]),
    ("err_unknown_input", ["bad.npz", "has no input x", "declares inputs x"]),
    ("err_no_inputs", ["declares input(s) x", "--inputs"]),
    ("err_no_length", ["declares no inputs", "--length"]),
    ("err_init_missing", ["init.npz", "no state x", "declares states x", "leave out --init"]),
    ("err_missing_file", ["missing.npz", "no such file"]),
    ("err_init_shape", ["init_shape.npz", "state 'x' has shape (3,)", "declares ()"]),
    ("err_length", ["--length 5", "16 steps"]),
])
def test_run_input_errors(batch, case, needles):
    res, d, _ = batch
    r = res[case]
    assert r.returncode == 1, r.stdout
    clean(r)
    assert r.stderr.startswith("recur: error:"), r.stderr
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)
    assert "KeyError" not in r.stderr and "length=T" not in r.stderr
    assert "context manager" not in r.stderr
    assert not (d / "e.npz").exists()


def test_run_warns_about_non_finite_states(batch):
    res, d, _ = batch
    r = res["blow_check"]
    assert r.returncode == 0, r.stderr               # the loop overflows too: they agree
    assert "state 'h' holds non-finite values (inf)" in r.stderr
    assert "step 38" in r.stderr and "the sequential loop produces them too" in r.stderr
    assert "'g'" not in r.stderr and "Warning" not in r.stderr and "Traceback" not in r.stderr
    assert "check: passed" in r.stdout and "nan" not in r.stdout.lower()
    r = res["blow"]
    assert r.returncode == 0 and "run with --check" in r.stderr


def test_run_nan_inputs_are_reported(batch):
    r = batch[0]["nan_inputs"]
    assert r.returncode == 0, r.stderr               # the loop gives the same NaNs
    assert "--inputs array 'x' holds non-finite values (NaN), first at step 2" in r.stderr
    assert "state 'h' holds non-finite values (NaN)" in r.stderr and "step 2" in r.stderr
    assert "the sequential loop produces them too" in r.stderr
    assert "check: passed (equal non-finite values count as agreement)" in r.stdout
    assert "Warning" not in r.stderr and "Traceback" not in r.stderr


def test_run_check_fails_on_a_wrong_result(batch):
    r = batch[0]["check_offset"]
    assert r.returncode == 1, r.stdout + r.stderr
    clean(r)
    assert "check: FAILED" in r.stdout and "step 3" in r.stdout and "tolerance" in r.stdout


def test_run_check_nan_against_a_number_is_a_disagreement(batch):
    r = batch[0]["check_nan"]
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "RuntimeWarning" not in r.stderr
    assert "check: FAILED" in r.stdout and "non-finite" in r.stdout and "nan" in r.stdout
    assert "check: passed" not in r.stdout
    assert "state 'h' holds non-finite values (NaN)" in r.stderr and "step 3" in r.stderr
    assert "the sequential loop stays finite" in r.stderr


def test_compile_output(batch):
    res, d, before = batch
    r = res["compile_missing_dir"]
    assert r.returncode == 1
    clean(r)
    assert "/missing/dir/x.py" in r.stderr and ".tmp" not in r.stderr
    r = res["compile_over_rec"]
    assert r.returncode == 1 and "never overwrites" in r.stderr
    assert (d / "m.rec").read_bytes() == before["m.rec"]
    assert res["compile_ok"].returncode == 0, res["compile_ok"].stderr
    assert "def " in (d / "m.py").read_text()


# ----------------------------------------------------------------------------- bench

def test_bench_speed_column_for_slow_methods():
    from recur.cli import _speed
    assert _speed(1.0, 200.0, False) == "200× slower"
    assert _speed(1.0, 0.25, False) == "4× faster"
    assert _speed(1.0, 1.0, True) == "1× (reference)"


def test_bench_reps_zero_and_unknown_method(batch):
    res, _, _ = batch
    r = res["bench_reps0"]
    assert r.returncode == 1 and "--reps must be at least 1" in r.stderr
    clean(r)
    r = res["bench_unknown"]
    assert r.returncode == 1 and "unknown method" in r.stderr and "sequential" in r.stderr


def test_bench_reports_a_failing_method_and_goes_on(batch):
    res, d, _ = batch
    r = res["bench_raise"]
    assert r.returncode == 0, r.stderr
    clean(r)
    lines = r.stdout.splitlines()
    row = next(line for line in lines if line.startswith("scan"))
    assert "failed: RuntimeError: injected failure" in row
    assert any(line.startswith("auto") for line in lines)
    records = json.loads((d / "b.json").read_text())["records"]
    assert [rec["method"] for rec in records] == ["sequential", "scan", "auto"]
    assert "injected failure" in records[1]["error"]


def test_bench_prints_each_row_as_it_finishes_json_and_plot(tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(driver), "slow", "bench", EMA, "--length",
                             "200", "--reps", "1", "--methods", "scan,sequential",
                             "--json", str(out_json), "--plot", str(out_png)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    seen, text = {}, ""
    markers = {"sequential row": "1× (reference)\n", "auto's name": "\nauto "}
    try:
        while ch := proc.stdout.read(1):    # a pipe, not a terminal
            text += ch
            for key, marker in markers.items():
                if key not in seen and text.endswith(marker):
                    seen[key] = time.monotonic()
        proc.wait(timeout=TIMEOUT)
        stderr = proc.stderr.read()
    finally:
        proc.kill()
    end = time.monotonic()
    r = Result(proc.returncode, text, stderr)
    assert r.returncode == 0, r.stderr
    clean(r)
    # the loop's row is out before "auto" (2 s slower) finishes, and auto's name shows
    # while it runs
    assert end - seen["sequential row"] > 1.5 and end - seen["auto's name"] > 1.5, text
    assert "recur bench ema" in text and "fell back" in text and "0.00x" not in text
    rows = [line for line in text.splitlines() if line.split()[:1] in (["scan"], ["auto"])]
    assert len(rows) == 2 and all(("× faster" in x) or ("× slower" in x) for x in rows)
    records = json.loads(out_json.read_text())["records"]
    assert [rec["method"] for rec in records] == ["sequential", "scan", "auto"]
    assert all(rec["max_abs_diff"] < 1e-5 for rec in records)
    assert out_png.stat().st_size > 1000


# ----------------------------------------------------------------------------- demo

def test_demo_shows_auto_the_gpu_plan_and_the_check(tmp_path):
    from recur.passes import _cost
    r = run("demo", "--length", "2000", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    clean(r)
    out = r.stdout
    assert "method='auto' runs" in out and "your own jitted jax.lax.scan" in out
    assert "On a GPU, method='auto' would run: scan" in out
    assert "predicted: scan" in out and "× faster" in out and "why:" in out
    if "assumed" in _cost.constants("gpu").source:
        assert "PREDICTION from assumed GPU constants" in out
    assert "max |recur - loop|" in out and "converged True" in out and "passed" in out
    assert "FAILED" not in out
    assert list(tmp_path.iterdir()) == []


def test_demo_exits_1_when_the_check_fails(batch):
    r = batch[0]["demo_nan"]
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert "FAILED" in r.stdout and "non-finite" in r.stdout


def test_the_cli_writes_nothing_into_the_repository(batch):
    r = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "examples"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    if r.returncode != 0:
        pytest.skip("not a git checkout")
    assert ".out.npz" not in r.stdout and ".tmp" not in r.stdout
