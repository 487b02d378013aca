"""The command line: a whole run, and every bad input ending in a clear error."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, interruptible, run_in_process, run_train, tiny_overrides

# The demo on tiny shapes: checkpoints at steps 4 and 6 (train.checkpoint_every=4).
DEMO = (
    "--config",
    "configs/bebr/demo.py:bits=2",
    *(f"--config.{o}" for o in tiny_overrides(steps=6)),
)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """(workdir, process) of the tiny demo run through the command line, run once."""
    workdir = tmp_path_factory.mktemp("demo") / "run"
    return workdir, run_train(*DEMO, "--workdir", str(workdir))


@pytest.mark.slow
def test_demo_run_writes_every_file(demo_run):
    workdir, proc = demo_run
    assert proc.returncode == 0, proc.stderr
    assert "| binary (recurrent codes) |" in proc.stdout
    results = json.loads((workdir / "results.json").read_text())
    for method in ("float", "binary", "hash"):
        assert {"R@1", "R@5", "R@10", "bits", "bytes_per_vector"} <= set(
            results["retrieval"][method]
        )
    assert json.loads((workdir / "config.json").read_text())["model"]["code_dim"] == 16
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 6
    assert (workdir / "results.md").exists() and (workdir / "results.png").exists()
    assert any((workdir / "checkpoints").iterdir())


def _pairs(tmp_path, **arrays):
    path = tmp_path / "pairs.npz"
    np.savez(path, **arrays)
    return str(path)


ONES = np.ones((40, 4), np.float32)


@pytest.mark.parametrize(
    "make_path, message",
    [
        (lambda t: str(t / "missing.npz"), "no such file"),
        (lambda t: _pairs(t, query=ONES, other=ONES), "no array 'doc'"),
        (lambda t: _pairs(t, query=ONES, doc=np.ones((39, 4))), "must have the same shape"),
        (lambda t: _pairs(t, query=ONES, doc=np.where(ONES > 0, np.inf, 0)), "non-finite"),
        (lambda t: _pairs(t, query=ONES.astype(int), doc=ONES), "expected float embeddings"),
        (lambda t: _pairs(t, query=ONES[:0], doc=ONES[:0]), "is empty"),
    ],
)
def test_bad_input_exits_nonzero_and_writes_nothing(tmp_path, make_path, message):
    path = make_path(tmp_path)
    workdir = tmp_path / "run"
    args = ("--config", f"configs/bebr/npz.py:path={path}", "--workdir", str(workdir))
    status, stderr = run_in_process(*args)
    assert status == 2 and message in stderr and path in stderr
    assert not workdir.exists()


def _bad_data(tmp_path, trainer: str) -> tuple[str, str]:
    """(config spec, expected message) of a data file `trainer` refuses."""
    rng = np.random.default_rng(0)
    path = tmp_path / f"{trainer}.npz"
    if trainer == "binarizer":
        np.savez(path, query=ONES, doc=np.where(ONES > 0, np.inf, 0))
        return f"configs/bebr/npz.py:path={path}", "non-finite"
    if trainer == "compatible":
        np.savez(path, **{k: rng.standard_normal((50, 8)) for k in ("query_new", "doc_new")})
        return f"configs/bebr/compatible.py:path={path}", "no array 'query_old'"
    if trainer == "bct":
        np.savez(path, x=ONES, y=np.full(40, 7))
        return f"configs/upgrade/bct.py:data=labelled,path={path}", "labels 'y' hold one class"
    return "configs/upgrade/sequential.py:data=labelled,path=/nonexistent/data.npz", "no such file"


@pytest.mark.slow  # a fresh interpreter each; the same refusals run in-process in the fast tier
@pytest.mark.parametrize("trainer", ["binarizer", "compatible", "bct", "sequential"])
def test_bad_data_from_the_command_is_the_in_process_line(tmp_path, trainer):
    spec, message = _bad_data(tmp_path, trainer)
    workdir = tmp_path / "run"
    status, stderr = run_in_process("--config", spec, "--workdir", str(workdir))
    assert status == 2 and message in stderr and len(stderr.splitlines()) == 1, stderr
    proc = run_train("--config", spec, "--workdir", str(workdir))  # no traceback, no warning
    assert (proc.returncode, proc.stderr) == (2, stderr)
    assert not workdir.exists()


@pytest.mark.parametrize("key", ["groups_key=group", "labels_key=label"])
def test_a_named_array_the_file_lacks_is_refused(tmp_path, key):
    path = _pairs(tmp_path, query=ONES, doc=ONES, labels=np.arange(40))
    workdir = tmp_path / "run"
    spec = f"configs/bebr/npz.py:path={path}"
    status, stderr = run_in_process(
        "--config", spec, f"--config.data.{key}", "--workdir", str(workdir)
    )
    assert status == 2 and f"no array '{key.split('=')[1]}'" in stderr, stderr
    assert not workdir.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--config", "configs/bebr/demo.py", "--config.train.stepz=3"],
            "'train.stepz' is unknown",
        ),
        (
            ["--config", "configs/bebr/demo.py", "--config.train.steps=many"],
            "'train.steps': expected int",
        ),
        (["--config", "configs/bebr/demo.py:bitz=2"], "'bitz' is unknown"),
        (["--config", "configs/bebr/nothere.py"], "does not exist"),
        (["--config", "configs/bebr/demo.py", "--config.optim.name=lbfgs"], "'optim.name'"),
        (
            ["--config", "configs/bebr/demo.py", "--config.loss.temperature=0"],
            "'loss.temperature' = 0.0: must be > 0",
        ),
        (
            ["--config", "configs/bebr/demo.py", "--config.train.batch_size=99999"],
            "'train.batch_size' = 99999",
        ),
        (
            ["--config", "configs/bebr/demo.py", "--config.mesh.num_devices=64"],
            "'mesh.num_devices' = 64",
        ),
        (["--config", "configs/bebr/demo.py:bits=5"], "'bits' = 5: must be in [1, 4]"),
        (
            ["--config", "configs/bebr/demo.py", "--config.data.num_pairs=40"]
            + ["--config.train.batch_size=8"],
            "Recall@10 needs more than 8 held-out pairs",
        ),
        (["--config", "configs/bebr/demo.py", "--config.train.steps=-3"], "'train.steps' = -3"),
        (
            ["--config", "configs/upgrade/bct.py", "--config.eval.ks=(1,600)"],
            "Recall@600 needs more than 600 held-out gallery items",
        ),
        (
            ["--config", "configs/bebr/demo.py", "--config.data.name=digits"],
            "data.name='digits' does not take the config's data keys",
        ),
        (
            ["--config", "configs/bebr/demo.py", "--config.data.name=imagenet"],
            "'data.name' = 'imagenet': no module bebrjax.data.imagenet",
        ),
    ],
)
def test_config_errors_exit_nonzero_and_write_nothing(tmp_path, args, message):
    workdir = tmp_path / "run"
    status, stderr = run_in_process(*args, "--workdir", str(workdir))
    assert status == 2 and message in stderr
    assert not workdir.exists()


def test_a_config_error_is_one_line_and_exit_2_from_the_command(tmp_path):
    workdir = tmp_path / "run"
    proc = run_train("--config", "configs/bebr/demo.py:bits=5", "--workdir", str(workdir))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: config argument 'bits' = 5: must be in [1, 4] (u = bits - 1)"
    ]
    assert not workdir.exists()


def _stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr without the progress bar's redrawn lines."""
    lines = proc.stderr.replace("\r", "\n").splitlines()
    return [ln for ln in lines if ln.strip() and "step/s" not in ln and "s/step" not in ln]


def _files(directory):
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_exit_130_and_the_same_command_resumes(tmp_path):
    import signal
    import time

    workdir = tmp_path / "run"
    args = [*DEMO, "--workdir", str(workdir), "--config.train.steps=120"]
    args += ["--config.train.checkpoint_every=10", "--config.mesh.num_devices=1"]
    command = [sys.executable, "-m", "bebrjax", "train", *args]
    run = interruptible(command, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    for _ in range(600):
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 15:
            break
        time.sleep(0.1)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    said = [line for line in err.split("\n") if "interrupted" in line]  # beside progress bars
    assert "Traceback" not in err and len(said) == 1, err
    assert "interrupted: what was written is kept; run the same command again to resume" in said[0]
    assert not (workdir / "results.json").exists()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((workdir / "train_time.json").read_text())["parts"][0]["start"] == 0
    assert len(json.loads((workdir / "results.json").read_text())["train"]["parts"]) == 2


@pytest.mark.slow
def test_a_torn_metrics_line_does_not_stop_a_resume(demo_run, tmp_path):
    from bebrjax.workdir import read_metrics

    workdir = tmp_path / "run"
    shutil.copytree(demo_run[0], workdir)
    straight = read_metrics(str(workdir))
    shutil.rmtree(workdir / "checkpoints" / "6")  # killed after step 4's checkpoint ...
    for name in ("results.json", "results.md"):
        (workdir / name).unlink()
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "loss": 1.2')  # ... in the middle of an append
    assert run_in_process(*DEMO, "--workdir", str(workdir)) == (0, "")
    assert [r["step"] for r in read_metrics(str(workdir))] == [r["step"] for r in straight]
    assert (workdir / "metrics.jsonl").read_text().endswith("\n")
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write("not json\n")  # a whole line that is not a record: named, not skipped
    status, err = run_in_process(*DEMO, "--workdir", str(workdir))
    assert status == 2 and "metrics.jsonl: line 7 is not JSON" in err, err


@pytest.mark.slow
def test_an_unreadable_latest_checkpoint_is_skipped_and_the_run_ends_the_same(demo_run, tmp_path):
    from bebrjax import checkpoint
    from bebrjax.workdir import read_metrics

    workdir = tmp_path / "run"
    shutil.copytree(demo_run[0], workdir)
    straight = json.loads((workdir / "results.json").read_text())
    args = (*DEMO, "--workdir", str(workdir))
    checkpoints, aside = workdir / "checkpoints", workdir / "checkpoints-unreadable"

    def truncate_data(step_dir):
        for path in step_dir.glob("default/**/d/*"):
            path.write_bytes(path.read_bytes()[:10])

    def empty_metadata(step_dir):
        (step_dir / "default" / "_METADATA").write_text("")

    for corrupt, moved_to in ((truncate_data, "6"), (empty_metadata, "6.1")):
        corrupt(checkpoints / "6")
        proc = run_train(*args)
        assert proc.returncode == 0, proc.stderr
        lines = _stderr_lines(proc)
        assert len(lines) == 1, lines
        warning = lines[0]
        assert "unreadable checkpoint(s) skipped: step 6:" in warning
        assert warning.endswith("resuming from step 4") and str(aside / moved_to) in warning
        assert (aside / moved_to / "default").is_dir()
        assert checkpoint.steps(str(checkpoints)) == [4, 6]
        results = json.loads((workdir / "results.json").read_text())
        assert results["retrieval"] == straight["retrieval"]
        assert [m["step"] for m in read_metrics(str(workdir))] == list(range(1, 7))
    train = results["train"]
    assert [(p["start"], p["end"]) for p in train["parts"]] == [(0, 6), (4, 6), (4, 6)]
    assert train["seconds"] == pytest.approx(sum(p["seconds"] for p in train["parts"]), abs=0.01)

    # None readable: one line, exit 2, and every file left as it was.
    truncate_data(checkpoints / "4")
    empty_metadata(checkpoints / "6")
    before = _files(workdir)
    proc = run_train(*args)
    (error,) = _stderr_lines(proc)
    assert proc.returncode == 2
    assert error.startswith(f"error: {checkpoints}: no checkpoint can be read")
    assert "step 6: JSONDecodeError" in error and "step 4: ValueError" in error
    assert _files(workdir) == before


def test_one_class_of_labelled_data_exits_2_before_writing(tmp_path):
    path = tmp_path / "one_class.npz"
    np.savez(path, x=np.ones((40, 4), np.float32), y=np.full(40, 7))
    workdir = tmp_path / "run"
    config = f"configs/upgrade/bct.py:data=labelled,path={path}"
    status, stderr = run_in_process("--workdir", str(workdir), "--config", config)
    (error,) = stderr.splitlines()
    assert status == 2 and error.startswith(f"error: {path}: labels 'y' hold one class")
    assert not workdir.exists()


def test_undefined_metrics_are_null_in_json_and_explained_in_markdown(tmp_path):
    from bebrjax import report
    from bebrjax import workdir as wd

    cell = {"mAP@R": 0.5, "TAR@FAR=0.01": float("nan")}
    results = {
        "matrix": {"old/old": cell, "new/new": cell, "new->old": cell, "paragon": cell},
        "update_gain": float("nan"),
        "negative_flip_rate": 0.0,
        "compatible": False,
        "inf": [float("inf"), -float("inf")],
    }
    wd.write_json(str(tmp_path / "r.json"), results)
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    loaded = json.loads(text)
    assert loaded["update_gain"] is None and loaded["inf"] == [None, None]
    assert loaded["matrix"]["paragon"] == {"mAP@R": 0.5, "TAR@FAR=0.01": None}
    for table in (report.matrix_table(results), report.matrix_table(loaded)):
        assert "| old / old | 0.500 | n/a |" in table and "update gain n/a;" in table
        assert "n/a: TAR@FAR is undefined: " in table
        assert "n/a: update gain is undefined: the paragon scores the same as old/old" in table


def test_importing_the_report_keeps_a_notebooks_backend():
    import importlib

    import matplotlib

    from bebrjax import report

    before = matplotlib.get_backend()
    matplotlib.use("pdf")  # stands in for a notebook's inline backend
    try:
        importlib.reload(report)
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(before)


@pytest.mark.slow
def test_a_workdir_belongs_to_one_running_process(tmp_path):
    from bebrjax import workdir as wd

    workdir = str(tmp_path / "run")
    # A process that claimed the workdir and was killed leaves no lock behind ...
    code = (
        f"import os; from bebrjax import workdir as wd; wd.prepare({workdir!r}, {{}}); "
        "os.kill(os.getpid(), 9)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == -9
    wd.claim(workdir)  # ... this process takes it, so a second run is refused at once.
    proc = run_train("--config", "configs/bebr/demo.py", "--workdir", workdir)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "in use by another running process" in err[0]
    assert sorted(os.listdir(workdir)) == ["config.json"]


@pytest.mark.slow
def test_no_arguments_and_a_file_as_workdir_are_one_line(tmp_path):
    proc = run_train()
    assert proc.returncode == 2 and proc.stderr.startswith("usage: bebrjax train")
    assert len(proc.stderr.strip().splitlines()) == 2
    (tmp_path / "file").write_text("kept")
    proc = run_train("--config", "configs/bebr/demo.py", "--workdir", str(tmp_path / "file"))
    assert proc.returncode == 2 and "exists and is not a directory" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and (tmp_path / "file").read_text() == "kept"
