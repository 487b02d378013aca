"""Index and checkpoint writes under failure and concurrency: nothing is lost or mixed."""

import errno
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import ROOT, run_in_process, tiny_overrides

from bebrjax import checkpoint, distributed
from bebrjax.commands import encode, export
from bebrjax.inference import export as export_lib
from bebrjax.search import BinaryIndex, safe_write
from bebrjax.search.writer import IndexWriter
from bebrjax.serving import load_bundle

WAIT = 120  # seconds a test waits for a paused writer before it fails


def _rows(n, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 16)).astype(np.float32)


def _encoded(workdir, tmp_path, n=48, name="index"):
    """The path of a new index of `n` random documents encoded by the run at `workdir`."""
    docs, index = tmp_path / f"{name}-docs.npy", tmp_path / name
    np.save(docs, _rows(n, seed=1))
    argv = ["--workdir", str(workdir), "--input", str(docs), "--index", str(index)]
    assert encode.main(argv) == 0
    return index


def _step(workdir, tmp_path, index, ids, seed, name):
    """`bebrjax encode` arguments of a backfill step of `ids` to version "new"."""
    np.save(tmp_path / f"{name}-rows.npy", _rows(len(ids), seed))
    np.save(tmp_path / f"{name}-ids.npy", np.asarray(ids, np.int64))
    return [
        *("--workdir", str(workdir), "--index", str(index), "--version", "new"),
        *("--input", str(tmp_path / f"{name}-rows.npy")),
        *("--ids", str(tmp_path / f"{name}-ids.npy")),
    ]


def _snapshot(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def _one_error(err):
    """The single line of a command's error on stderr."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _in_thread(work):
    """Starts `work()` in a thread; returns the thread and the list its result lands in."""
    result = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    return thread, result


def _paused(monkeypatch, owner, name, after=1):
    """Pauses `owner.name` after its `after`-th call: (entered, go) events."""
    real, calls = getattr(owner, name), []
    entered, go = threading.Event(), threading.Event()

    def paused(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == after:
            entered.set()
            assert go.wait(WAIT)
        return out

    monkeypatch.setattr(owner, name, paused)
    return entered, go


def test_a_failed_swap_that_cannot_be_undone_keeps_the_old_index_and_names_it(
    binarizer_run, tmp_path, monkeypatch, capsys
):
    workdir, _ = binarizer_run
    index = _encoded(workdir, tmp_path)
    before = _snapshot(index)
    argv = _step(workdir, tmp_path, index, [0, 1, 2], seed=2, name="a")
    real = os.replace

    def replace(src, dst):  # both renames onto the index fail: the new one and the way back
        if os.path.abspath(dst) == str(index):
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(safe_write, "_exchange", lambda a, b: False)
    monkeypatch.setattr(os, "replace", replace)
    capsys.readouterr()
    assert encode.main(argv) == 2
    monkeypatch.undo()
    line = _one_error(capsys.readouterr().err)
    assert f"{index}: replacing it failed" in line and "and so did restoring it" in line, line
    kept = re.search(r"kept at (\S+)$", line).group(1)
    assert _snapshot(pathlib.Path(kept)) == before
    assert not index.exists()
    os.rename(kept, index)  # what the message asks of the user
    assert _snapshot(index) == before and BinaryIndex.load(str(index)).ntotal == 48


@pytest.mark.slow
def test_a_backfill_step_is_refused_while_another_writes_the_index_and_none_is_lost(
    binarizer_run, tmp_path, monkeypatch, capsys
):
    workdir, _ = binarizer_run
    index = _encoded(workdir, tmp_path)
    first = _step(workdir, tmp_path, index, [0, 1, 2, 3], seed=2, name="a")
    second = _step(workdir, tmp_path, index, [10, 11, 12], seed=3, name="b")
    entered, go = _paused(monkeypatch, BinaryIndex, "replace")
    thread, status = _in_thread(lambda: encode.main(first))
    try:
        assert entered.wait(WAIT)  # the first step holds the index: replaced in memory, not saved
        before = _snapshot(index)
        proc = subprocess.run(
            [sys.executable, "-m", "bebrjax", "encode", *second],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert _snapshot(index) == before
    finally:
        go.set()
        thread.join(WAIT)
    assert proc.returncode == 2, proc.stderr
    assert _one_error(proc.stderr) == (
        f"error: {index}: in use by backfill (pid {os.getpid()}); run this again when it "
        "has finished"
    )
    assert status == [0]
    monkeypatch.undo()
    assert encode.main(second) == 0  # run again, it lands beside the first
    loaded = BinaryIndex.load(str(index))
    assert loaded.counts()["new"] == 7
    replaced = np.flatnonzero(loaded.doc_versions == list(loaded.versions).index("new"))
    np.testing.assert_array_equal(replaced, [0, 1, 2, 3, 10, 11, 12])
    assert not list(tmp_path.glob(".*.lock"))


def test_a_second_encode_of_one_partial_index_is_refused_and_the_first_finishes(
    binarizer_run, tmp_path, monkeypatch, capsys
):
    workdir, _ = binarizer_run
    docs, index = tmp_path / "docs.npy", tmp_path / "index"
    np.save(docs, _rows(96, seed=4))
    argv = ["--workdir", str(workdir), "--input", str(docs), "--batch-size", "16"]
    entered, go = _paused(monkeypatch, IndexWriter, "write")
    thread, status = _in_thread(lambda: encode.main([*argv, "--index", str(index)]))
    try:
        assert entered.wait(WAIT)  # one batch of six written
        capsys.readouterr()
        for extra in ([], ["--overwrite"]):
            assert encode.main([*argv, "--index", str(index), *extra]) == 2
            assert _one_error(capsys.readouterr().err) == (
                f"error: {index}.partial: in use by encode (pid {os.getpid()}); run this "
                "again when it has finished"
            )
    finally:
        go.set()
        thread.join(WAIT)
    assert status == [0]
    monkeypatch.undo()
    assert encode.main([*argv, "--index", str(tmp_path / "straight")]) == 0
    assert _snapshot(index) == _snapshot(tmp_path / "straight")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.npy", "index", "straight"]


def test_an_export_bundles_one_generation_of_an_index_being_backfilled(
    binarizer_run, tmp_path, monkeypatch, capsys
):
    workdir, _ = binarizer_run
    index = _encoded(workdir, tmp_path)
    steps = [_step(workdir, tmp_path, index, [0, 1, 2], seed=2 + i, name=f"s{i}") for i in (0, 1)]
    argv = ["--workdir", str(workdir), "--index", str(index), "--platforms", "cpu", "--out"]
    real_copy, real_serialize, backfilled = shutil.copyfile, export_lib.serialize, []

    def copy_then_backfill(src, dst, **kwargs):  # another writer, after the copy's first file
        out = real_copy(src, dst, **kwargs)
        if not backfilled:
            thread, status = _in_thread(lambda: encode.main(steps[0]))
            thread.join(WAIT)
            backfilled.append(status[0])
        return out

    # 1. a backfill step while the index is being copied: refused, the copy one generation
    before = _snapshot(index)
    monkeypatch.setattr(shutil, "copyfile", copy_then_backfill)
    capsys.readouterr()
    assert export.main([*argv, str(tmp_path / "during")]) == 0
    monkeypatch.undo()
    assert backfilled == [2]
    assert _one_error(capsys.readouterr().err) == (
        f"error: {index}: in use by export (pid {os.getpid()}); run this again when it has finished"
    )
    assert _snapshot(tmp_path / "during" / "index") == before == _snapshot(index)
    assert load_bundle(str(tmp_path / "during")).index.ntotal == 48  # the hashes match

    # 2. a backfill step between the check and the copy: the bundle holds the new generation
    def serialize_then_backfill(*args, **kwargs):
        out = real_serialize(*args, **kwargs)
        if len(backfilled) == 1:
            backfilled.append(encode.main(steps[1]))
        return out

    monkeypatch.setattr(export_lib, "serialize", serialize_then_backfill)
    assert export.main([*argv, str(tmp_path / "after")]) == 0
    monkeypatch.undo()
    assert backfilled == [2, 0]
    after = _snapshot(index)
    assert after != before and _snapshot(tmp_path / "after" / "index") == after
    bundle = load_bundle(str(tmp_path / "after"))
    assert bundle.index.counts()["new"] == 3 and bundle.manifest["index"]["count"] == 48


def _checkpoints(directory):
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def test_a_checkpoint_that_fails_for_a_cause_other_than_damage_stops_the_run_in_place(
    binarizer_run, tmp_path, monkeypatch
):
    workdir = tmp_path / "run"
    shutil.copytree(binarizer_run[0], workdir)
    directory = workdir / "checkpoints"
    newest = checkpoint.steps(str(directory))[-1]
    before = _checkpoints(directory)
    real = ocp.CheckpointManager.restore

    def restore(self, step, *args, **kwargs):  # the newest step's disk fails, for now
        if step == newest:
            raise OSError(errno.EIO, "Input/output error")
        return real(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", restore)
    config = os.path.join(ROOT, "configs/bebr/demo.py")
    overrides = [f"--config.{o}" for o in (*tiny_overrides(steps=8), "eval.hash=false")]
    status, err = run_in_process("--config", config, *overrides, "--workdir", str(workdir))
    assert status == 2
    assert _one_error(err) == (
        f"error: {directory}: step {newest} cannot be read (OSError: [Errno 5] Input/output "
        "error), an error that does not say it is damaged; nothing was moved: run again once "
        "it is fixed"
    )
    assert _checkpoints(directory) == before
    assert not (workdir / "checkpoints-unreadable").exists()


def test_only_process_0_moves_a_damaged_checkpoint_aside(tmp_path, monkeypatch):
    directory = tmp_path / "checkpoints"
    mngr = checkpoint.manager(str(directory), every=1, keep=3)
    for step in (1, 2):
        checkpoint.save(mngr, step, {"w": jnp.full(64, float(step))}, force=True)
    mngr.wait_until_finished()
    mngr.close()
    for path in (directory / "2").glob("default/**/d/*"):
        path.write_bytes(path.read_bytes()[:10])
    real, barriers = ocp.CheckpointManager.restore, []

    def restore(self, step, *args, **kwargs):
        try:
            return real(self, step, *args, **kwargs)
        except Exception:
            os.rename(directory / "2", tmp_path / "moved")  # process 0 was quicker
            raise

    monkeypatch.setattr(ocp.CheckpointManager, "restore", restore)
    monkeypatch.setattr(distributed, "is_primary", lambda: False)
    monkeypatch.setattr(distributed, "barrier", barriers.append)
    state = checkpoint.restore_latest(str(directory), {"w": jnp.zeros(64)})
    np.testing.assert_array_equal(state["w"], np.ones(64))
    assert barriers == ["checkpoint.set_aside"]  # it waited for process 0, and moved nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "moved"]
