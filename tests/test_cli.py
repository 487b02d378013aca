"""The command line: a whole run, and every bad input ending in a clear error."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, run_main, tiny_overrides


def test_demo_run_writes_every_file(tmp_path):
    workdir = tmp_path / "run"
    proc = run_main(
        "--config",
        "configs/bebr/demo.py:bits=2",
        "--workdir",
        str(workdir),
        *(f"--config.{o}" for o in tiny_overrides(steps=6)),
    )
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
    proc = run_main("--config", f"configs/bebr/npz.py:path={path}", "--workdir", str(workdir))
    assert proc.returncode != 0
    assert message in proc.stderr and path in proc.stderr
    assert "Traceback" not in proc.stderr
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
    proc = run_main(*args, "--workdir", str(workdir))
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not workdir.exists()


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
    proc = run_main("--config", "configs/bebr/demo.py", "--workdir", workdir)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "in use by another running process" in err[0]
    assert sorted(os.listdir(workdir)) == ["config.json"]


def test_no_arguments_and_a_file_as_workdir_are_one_line(tmp_path):
    proc = run_main()
    assert proc.returncode == 2 and proc.stderr.startswith("usage: python -m bebrjax.main")
    assert len(proc.stderr.strip().splitlines()) == 2
    (tmp_path / "file").write_text("kept")
    proc = run_main("--config", "configs/bebr/demo.py", "--workdir", str(tmp_path / "file"))
    assert proc.returncode == 2 and "exists and is not a directory" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and (tmp_path / "file").read_text() == "kept"
