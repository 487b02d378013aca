"""The one `bebrjax` command: subcommands, help, version, `info`, reprs, search output, bars."""

import importlib
import importlib.metadata
import json
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from conftest import ROOT, run_in_process

import bebrjax
from bebrjax.commands import COMMANDS, encode, info, search
from bebrjax.commands import ivf as ivf_command
from bebrjax.inference import Binarizer, Encoder, Runs, Versions, load
from bebrjax.inference.export import export_bundle
from bebrjax.inference.query import search_index
from bebrjax.search import BinaryIndex, IVFIndex, ShardedIndex
from bebrjax.search.plan import ScoringPlan, Term, VersionPlan

OLD_FORMS = ("main", "encode", "query", "export", "heldout", "ivf", "to_faiss", "upgrade")


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_importing_bebrjax_imports_no_command_module():
    code = "import sys, bebrjax; print([m for m in sys.modules if m.startswith('bebrjax.')])"
    proc = _run(sys.executable, "-c", code)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_the_console_script_lists_every_subcommand_with_one_line():
    script = shutil.which("bebrjax")
    assert script is not None, "pip install -e . installs the bebrjax console script"
    proc = _run(script, "--help")
    assert proc.returncode == 0, proc.stderr
    for name, command in COMMANDS.items():
        assert f"  {name}" in proc.stdout and command.summary in proc.stdout


def test_version_has_one_source():
    assert bebrjax.__version__ == importlib.metadata.version("bebrjax")
    proc = _run(sys.executable, "-m", "bebrjax", "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"bebrjax {bebrjax.__version__}"


@pytest.mark.parametrize("argv", [[], ["nope"], ["--nope"]])
def test_a_missing_or_unknown_subcommand_is_a_usage_error(argv):
    proc = _run(sys.executable, "-m", "bebrjax", *argv)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 2, proc.stderr
    assert lines[0].startswith("usage: bebrjax") and lines[1].startswith("bebrjax: error:")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_subcommand_has_help(name, capsys):
    module = importlib.import_module(f"bebrjax.commands.{COMMANDS[name].module}")
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith(f"usage: bebrjax {name}")
    assert COMMANDS[name].summary in out
    start_up = name in ("train", "encode", "search")  # the commands that run on N processes
    assert ("--num_processes" in out) == start_up


def test_the_old_module_commands_are_gone():
    for name in OLD_FORMS:
        assert importlib.util.find_spec(f"bebrjax.{name}") is None, name
    assert importlib.util.find_spec("bebrjax.search.__main__") is None


def test_a_flag_train_does_not_know_is_a_usage_error_and_overrides_pass(tmp_path):
    status, err = run_in_process("--config", "configs/bebr/demo.py", "--workdir", "w", "--epochs=2")
    assert status == 2 and "unrecognized arguments: --epochs=2" in err
    args = ["--config.train.nope=1", "--config", "configs/bebr/demo.py"]
    status, err = run_in_process(*args, "--workdir", str(tmp_path / "w"))
    assert status == 2 and err.startswith("error: config key 'train.nope' is unknown")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "w").exists()


def _codes(n, u=1, m=24, seed=0):
    rng = np.random.default_rng(seed)
    return np.where(rng.random((n, u + 1, m)) < 0.5, -1, 1).astype(np.int8)


def test_index_reprs_are_one_line():
    index = BinaryIndex(24, 1)
    index.add(_codes(300))
    index.add(_codes(20, seed=1), version="new")
    expected = (
        "BinaryIndex(count=320, m=24, u=1, metric='ip', versions={'default': 300, 'new': 20})"
    )
    assert repr(index) == expected
    assert repr(IVFIndex.from_index(index, 4)) == f"IVFIndex(nlist=4, codes={expected})"
    assert repr(ShardedIndex(index)) == f"ShardedIndex(count=320, process 0 of 1, local={expected})"


def _encoder(name, shape, step=7):
    weights = {"params": {"w": np.arange(10_000, dtype=np.float32)}}
    return Encoder(name, "binarizer", None, weights, shape, np.dtype("float32"), "l2", step, None)


def test_loaded_model_reprs_are_one_line_without_weights(binarizer_run):
    workdir, _ = binarizer_run
    model = load(str(workdir))
    step = model.encoder.step
    assert repr(model) == f"Binarizer(workdir={str(workdir)!r}, step={step}, d=16, m=16, u=1)"
    assert repr(model.encoder) == (
        f"Encoder(name='binarizer', kind='binarizer', step={step}, input=[N, 16] float32)"
    )
    config = ml_collections.ConfigDict({"model": {"code_dim": 8, "loops": 1}})
    old = Binarizer("w/old", "binarizer", config, {"binarizer": _encoder("binarizer", (4,))})
    versions = Versions("w", "compatible", config, {"psi": _encoder("psi", (2, 8))}, {"old": old})
    text = repr(versions)
    assert text == (
        "Versions(workdir='w', trainer='compatible', step=7, parts=['psi'], "
        "codes={'old': 'm=8, u=1'})"
    )
    assert repr(Runs(bct=old, l2=old)) == "Runs(bct, l2)"
    for shown in (repr(model), text, repr(old)):
        assert "\n" not in shown and "Array" not in shown and "array" not in shown


def _info(path, capsys, *flags):
    assert info.main([str(path), *flags]) == 0
    return capsys.readouterr().out


def test_info_of_a_workdir_a_bundle_an_index_and_a_plan(binarizer_run, tmp_path, capsys):
    workdir, results = binarizer_run
    out = _info(workdir, capsys)
    lines = dict(line.split(None, 1) for line in out.strip().splitlines() if " " in line)
    assert lines["kind"] == "workdir" and lines["trainer"] == "binarizer"
    assert lines["finished"] == "True" and "R@10: float" in out and "checkpoints" in out
    summary = json.loads(_info(workdir, capsys, "--json"))
    assert summary["steps"] == results["train"]["steps"] and (summary["m"], summary["u"]) == (16, 1)

    export_bundle(str(workdir), str(tmp_path / "bundle"), platforms=["cpu"])
    summary = json.loads(_info(tmp_path / "bundle", capsys, "--json"))
    assert summary["kind"] == "bundle" and summary["part"] == "binarizer"
    assert (summary["d"], summary["m"], summary["u"], summary["platforms"]) == (16, 16, 1, ["cpu"])

    index = BinaryIndex(24, 1)
    index.add(_codes(300))
    index.save(str(tmp_path / "index"))
    IVFIndex.from_index(index, 4).save(str(tmp_path / "ivf"))
    summary = json.loads(_info(tmp_path / "index", capsys, "--json"))
    assert (summary["kind"], summary["count"], summary["versions"]) == (
        "index",
        300,
        {"default": 300},
    )
    summary = json.loads(_info(tmp_path / "ivf", capsys, "--json"))
    assert summary["kind"] == "ivf index" and summary["nlist"] == 4
    assert summary["list_sizes"][0] <= summary["list_sizes"][2] and "lists.npy" in summary["files"]

    term = Term("old", 1.0, 1.0, 0.0)
    plan = ScoringPlan({"old": {"workdir": "w/old"}}, (VersionPlan("old", "old", (term,)),), m=24)
    plan.save(str(tmp_path / "plan.json"))
    out = _info(tmp_path / "plan.json", capsys)
    assert "scoring plan" in out and "old: 1 x old" in out and "w/old" in out


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda t: t / "missing", "no such file or directory"),
        (lambda t: t, "not a workdir (config.json), an index"),
        (lambda t: (t / "x.json").write_text("{}") and t / "x.json", "not a scoring plan"),
    ],
)
def test_info_of_something_else_is_one_line(tmp_path, capsys, make, message):
    assert info.main([str(make(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err


@pytest.mark.slow
def test_python_dash_m_bebrjax_runs_a_subcommand(tmp_path):
    index = BinaryIndex(24, 0, metric="hamming")
    index.add(_codes(50, u=0))
    index.save(str(tmp_path / "index"))
    proc = _run(sys.executable, "-m", "bebrjax", "info", str(tmp_path / "index"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["metric"] == "hamming"


@pytest.fixture
def slow_first_step(monkeypatch):
    """(clock, bars): a fake clock for progress bars, and every `progress.Bar` made, shown.

    Work advances the clock by hand (30 s for a compiling first step, 0.1 s
    for each one after), so a bar's elapsed time, rate and ETA are exact.
    """
    import tqdm.std

    from bebrjax import progress
    from bebrjax.inference import corpus

    clock, bars = [1000.0], []
    monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)  # no thread on the real clock

    class Shown(progress.Bar):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": False})  # a terminal or not
            bars.append(self)

    monkeypatch.setattr(progress, "Bar", Shown)
    monkeypatch.setattr(corpus, "Bar", Shown)
    return clock, bars


def _step_time(clock, first):
    clock[0] += 30.0 if first else 0.1


def test_the_training_bar_leaves_the_compiling_first_step_out_of_its_eta(tmp_path, slow_first_step):
    import jax.numpy as jnp

    from bebrjax import sharding
    from bebrjax.trainers import loop

    clock, bars = slow_first_step
    seen = {}

    def train_step(state, batch):
        step = int(state["step"])
        if step == 21:  # 21 steps done: 20 of 0.1 s after the first
            seen.update(bars[0].format_dict)
        _step_time(clock, step == 0)
        return {"step": state["step"] + 1}, {"loss": jnp.zeros(())}

    state = {"step": jnp.zeros((), jnp.int32)}
    loop.train_loop(
        state,
        train_step,
        lambda step: {"x": np.zeros((8, 2), np.float32)},
        workdir=str(tmp_path),
        total=41,
        schedule=lambda step: 0.1,
        mesh=sharding.make_mesh(1),
        log_every=100,
        checkpoint_every=1000,
        keep_checkpoints=1,
    )
    assert seen["n"] == 21 and seen["elapsed"] == pytest.approx(2.0)  # not 32 s
    assert seen["rate"] == pytest.approx(10.0)  # steps per second
    assert (seen["total"] - seen["n"]) / seen["rate"] == pytest.approx(2.0)  # the ETA, in s
    assert bars[0].format_dict["elapsed"] == pytest.approx(4.0)


def test_the_encode_bar_leaves_the_compiling_first_batch_out_of_its_rate(
    tmp_path, slow_first_step, monkeypatch
):
    from types import SimpleNamespace

    from bebrjax.inference import corpus

    clock, bars = slow_first_step
    calls, seen = [], {}

    def apply(variables, rows):
        if len(calls) == 30:  # batch j is written once batch j + 1 is sent: 29 written
            seen.update(bars[0].format_dict)
        _step_time(clock, not calls)
        calls.append(len(rows))
        return np.ones((len(rows), 2, 8), np.int8)

    monkeypatch.setattr(corpus.sharding, "sharded_apply", lambda fn, mesh, batch: apply)
    np.save(tmp_path / "rows.npy", np.ones((410, 4), np.float32))
    source = corpus.open_embeddings(str(tmp_path / "rows.npy"), None, 4)
    written = []
    writer = SimpleNamespace(write=written.append)
    corpus._encode_rows(
        SimpleNamespace(forward=None, mesh=None, variables=None), source, writer, 0, 10, True
    )
    assert len(calls) == len(written) == 41 and bars[0].n == 410
    # The clock restarted when batch 0 was written, after batch 1 was sent: 28 batches of
    # 0.1 s since, whatever the first one's 30 s.
    assert seen["n"] == 290 and seen["elapsed"] == pytest.approx(2.8)
    assert seen["rate"] == pytest.approx(100.0)  # rows per second
    assert (seen["total"] - seen["n"]) / seen["rate"] == pytest.approx(1.2)  # the ETA, in s


def test_info_of_an_ivf_index_shows_its_default_nprobe(tmp_path, capsys):
    index = BinaryIndex(24, 1)
    index.add(_codes(300))
    ivf = IVFIndex.from_index(index, 4)
    ivf.save(str(tmp_path / "none"))  # none chosen: every list
    ivf.nprobe = 2
    ivf.save(str(tmp_path / "two"))
    for name, nprobe, stored in [("none", 4, False), ("two", 2, True)]:
        summary = json.loads(_info(tmp_path / name, capsys, "--json"))
        assert (summary["nprobe"], summary["nprobe_stored"]) == (nprobe, stored)
    lines = [line.split() for line in _info(tmp_path / "two", capsys).splitlines()]
    assert ["nprobe", "2"] in lines and ["nprobe", "stored", "True"] in lines


@pytest.mark.slow
def test_search_says_how_it_probed_and_uses_the_ivf_default(binarizer_run, tmp_path, capsys):
    workdir = str(binarizer_run[0])
    rng = np.random.default_rng(4)
    docs, queries = tmp_path / "docs.npy", tmp_path / "queries.npy"
    np.save(docs, rng.standard_normal((300, 16)).astype(np.float32))
    np.save(queries, rng.standard_normal((30, 16)).astype(np.float32))
    plain, path, hits = (str(tmp_path / name) for name in ("docs.bebr", "docs.ivf", "hits.npz"))
    assert encode.main(["--workdir", workdir, "--input", str(docs), "--index", plain]) == 0
    assert ivf_command.main(["--index", plain, "--out", path, "--nlist", "8", "--nprobe", "2"]) == 0
    capsys.readouterr()
    argv = ["--workdir", workdir, "--queries", str(queries), "--k", "5", "--overwrite"]

    def run(*flags):
        assert search.main([*argv, *flags, "--out", hits]) == 0
        *table, line = capsys.readouterr().out.strip().splitlines()
        with np.load(hits) as found:
            return "\n".join(table), json.loads(line), found["ids"]

    table, summary, ids = run("--index", path)  # no --nprobe: the index's default
    assert "2 of 8 lists (the index's default)" in table and "queries/s" in table
    assert {k: summary[k] for k in ("mode", "nprobe", "nlist", "nprobe_default")} == {
        "mode": "ivf",
        "nprobe": 2,
        "nlist": 8,
        "nprobe_default": True,
    }
    assert summary["search_seconds"] > 0 and summary["encode_seconds"] > 0
    assert summary["queries_per_second"] == pytest.approx(30 / summary["search_seconds"], 0.01)
    expected, _ = search_index(IVFIndex.load(path), str(queries), k=5, workdir=workdir, nprobe=2)
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(search_index(path, str(queries), k=5, workdir=workdir)[0], ids)
    table, summary, ids = run("--index", path, "--nprobe", "3")
    assert "3 of 8 lists" in table and "default" not in table
    assert (summary["nprobe"], summary["nprobe_default"]) == (3, False)
    exhaustive = search_index(plain, str(queries), k=5, workdir=workdir)[0]
    for where in ([path, "--nprobe", "all"], [plain]):
        table, summary, ids = run("--index", *where)
        assert "all (exhaustive)" in table and summary["mode"] == "exhaustive"
        assert "nprobe" not in summary
        np.testing.assert_array_equal(ids, exhaustive)
    meta = json.loads((tmp_path / "docs.ivf" / "ivf.json").read_text())
    del meta["nprobe"]  # an index saved before the default existed: every list
    (tmp_path / "docs.ivf" / "ivf.json").write_text(json.dumps(meta))
    table, summary, ids = run("--index", path)
    assert "8 of 8 lists (no default stored: every list)" in table
    np.testing.assert_array_equal(ids, exhaustive)
    with pytest.raises(SystemExit, match="2"):  # a usage error, as argparse's own
        search.main([*argv, "--index", path, "--nprobe", "few", "--out", hits])
    assert "--nprobe: 'few': a number of lists, or all" in capsys.readouterr().err
