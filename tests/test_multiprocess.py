"""Two local processes x 2 CPU devices (`launch/multiprocess.sh`) against one process x 4 devices.

The references run in this process on 4 of its 8 forced devices; the
multi-process runs are the launcher's, as a user starts them. The
binarizer demo and one upgrade method (BCT, with the SGD recipe) give equal
losses (rtol 1e-5) and equal results; a two-process run killed after a
checkpoint resumes to the same parameters; a search over an index split
between the two processes equals one process's, bit for bit.
"""

import json
import os
import subprocess
import sys
import tempfile
from fractions import Fraction

import numpy as np
import pytest
from conftest import ROOT, kill_and_resume, tiny_overrides

from bebrjax import distributed
from bebrjax.errors import ConfigError
from bebrjax.inference.corpus import as_binarizer, encode_corpus
from bebrjax.inference.heldout import held_out, write_pairs
from bebrjax.inference.plans import fit_runs
from bebrjax.inference.query import read_queries, search_index, search_versions
from bebrjax.search import BinaryIndex
from bebrjax.trainers import train

LAUNCHERS = ("multiprocess.sh", "slurm.sbatch", "tpu_vm.sh")
UPGRADE = [
    "train.steps=12",
    "train.batch_size=64",
    "train.log_every=1",
    "train.checkpoint_every=6",
    "data.num_classes=20",
    "data.per_class=20",
    "old.model.backbone_args.widths=(32,)",
    "new.model.backbone_args.widths=(64,)",
    "optim.name=sgd",
    "optim.lr=0.05",
    "eval.batch_size=128",
]


def start(n: int, *args: str, command: str | None = None) -> subprocess.Popen:
    """Starts `launch/multiprocess.sh n ARGS` with 2 CPU devices per process."""
    env = {**os.environ, "XLA_FLAGS": "", "DEVICES_PER_PROCESS": "2", "PYTHON": sys.executable}
    if command:
        env["COMMAND"] = command
    # Files, not pipes: nothing blocks while the launch runs unattended.
    out, err = (tempfile.TemporaryFile("w+") for _ in range(2))
    launched = subprocess.Popen(
        ["bash", os.path.join(ROOT, "launch", "multiprocess.sh"), str(n), *args],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=err,
        text=True,
    )
    launched.outputs = out, err
    return launched


def finish(launched: subprocess.Popen) -> str:
    """Waits for a launch to succeed; returns its standard output."""
    launched.wait(timeout=300)
    out, err = launched.outputs
    for f in (out, err):
        f.seek(0)
    assert launched.returncode == 0, err.read()[-3000:]
    return out.read()


def launch(n: int, *args: str, command: str | None = None) -> str:
    """`launch/multiprocess.sh n ARGS` with 2 CPU devices per process, to the end."""
    return finish(start(n, *args, command=command))


def losses(workdir) -> list[tuple[int, float]]:
    """(step, loss) of every line of a stage's metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f)]


def same_losses(one, two) -> None:
    steps, values = zip(*losses(one), strict=True)
    assert [s for s, _ in losses(two)] == list(steps)
    np.testing.assert_allclose([v for _, v in losses(two)], values, rtol=1e-5)


def results(workdir) -> dict:
    """results.json without its times (each run's own)."""
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f, object_hook=lambda d: {k: v for k, v in d.items() if k != "seconds"})


@pytest.fixture(scope="module")
def two_process_demo(tmp_path_factory):
    """The tiny demo's 1 x 4 workdir, its 2 x 2 workdir, and the launcher's output.

    The reference trains here while the two processes run (the machine's
    cores are seldom all busy in either).
    """
    overrides = [f"--config.{o}" for o in tiny_overrides()]
    two, one = tmp_path_factory.mktemp("demo2"), tmp_path_factory.mktemp("demo1")
    launched = start(2, "configs/bebr/demo.py", str(two), *overrides)
    train("configs/bebr/demo.py", str(one), [*tiny_overrides(), "mesh.num_devices=4"])
    return one, two, finish(launched)


@pytest.mark.slow
def test_binarizer_demo_equals_one_process_and_resumes(two_process_demo):
    one, two, stdout = two_process_demo
    same_losses(one, two)
    assert results(one) == results(two)
    assert (one / "results.md").read_text().strip() in stdout  # the launcher prints the table
    overrides = [f"--config.{o}" for o in tiny_overrides()]
    kill_and_resume(two, (".",), lambda: launch(2, "configs/bebr/demo.py", str(two), *overrides))


@pytest.mark.slow
def test_upgrade_method_equals_one_process(tmp_path):
    """BCT's own stage, the new model against the old, on both; the others are shared.

    The two-process run reuses the reference's old model and paragon (a
    finished stage is restored, here across topologies), so what it trains
    is the new model with the influence loss through the old classifier.
    """
    config, one, two = "configs/upgrade/bct.py", tmp_path / "one", tmp_path / "two"
    train(config, str(one), [*UPGRADE, "mesh.num_devices=4"])
    shared = [f"old_workdir={one / 'old'}", f"paragon_workdir={one / 'paragon'}"]
    launch(2, config, str(two), *[f"--config.{o}" for o in UPGRADE + shared])
    same_losses(one / "new", two / "new")
    assert results(one) == results(two)


@pytest.mark.slow
def test_search_split_over_two_processes_equals_one(two_process_demo, tmp_path):
    _, run, _ = two_process_demo
    pairs, index = str(tmp_path / "eval.npz"), str(tmp_path / "docs.bebr")
    write_pairs(pairs, held_out(str(run)))
    encode_corpus(str(run), pairs, index, progress=False)
    hits = str(tmp_path / "hits.npz")
    args = ["--index", index, "--workdir", str(run), "--queries", pairs, "--k", "40"]
    launch(2, *args, "--out", hits, command="search")
    ids, scores = search_index(index, pairs, k=40, workdir=str(run))
    with np.load(hits) as got:
        np.testing.assert_array_equal(got["ids"], ids)
        np.testing.assert_array_equal(got["scores"], scores)
    # Version-aware: the run under two names, half the index re-encoded as "new".
    plan = str(tmp_path / "plan.json")
    fit_runs({"old": str(run), "new": str(run)}, {"old": {"new": 0.5}}, pairs=200).save(plan)
    mixed = str(tmp_path / "mixed.bebr")
    encode_corpus(str(run), pairs, mixed, progress=False, version="old")
    with np.load(pairs) as held:
        half = np.arange(0, len(held["doc"]), 2)
        np.savez(tmp_path / "step.npz", doc=held["doc"][half])
    step = str(tmp_path / "step.npz")
    encode_corpus(str(run), step, mixed, progress=False, version="new", ids=half)
    queries = ["--queries", f"old={pairs}", "--queries", f"new={pairs}"]
    launch(
        2,
        "--index",
        mixed,
        "--plan",
        plan,
        *queries,
        "--k",
        "40",
        "--out",
        hits,
        "--overwrite",
        command="search",
    )
    ids, scores = search_versions(mixed, {"old": pairs, "new": pairs}, k=40, plan=plan)
    with np.load(hits) as got:
        np.testing.assert_array_equal(got["ids"], ids)
        np.testing.assert_array_equal(got["scores"], scores)


def exact_top(index, query_planes, k):
    """Brute force: each query's k best by the exact sign(ip) ip^2 / norm, ties to the lower id."""
    words = index._queries(query_planes)[0]["words"]
    tops = []
    for query_words in words:
        ip, norm = (x.tolist() for x in index.exact_ints(query_words))
        keys = [Fraction(i * abs(i), n) for i, n in zip(ip, norm, strict=True)]
        tops.append(sorted(range(index.ntotal), key=lambda d: (-keys[d], d))[:k])
    return np.array(tops)


@pytest.mark.slow
def test_sharded_search_of_duplicates_equals_brute_force(two_process_demo, tmp_path):
    """Best codes stored more than k + SPARE times: each process sends bounded candidates."""
    _, run, _ = two_process_demo
    pairs, index, hits = (str(tmp_path / f) for f in ("eval.npz", "docs.bebr", "hits.npz"))
    write_pairs(pairs, held_out(str(run)))
    encode_corpus(str(run), pairs, index, progress=False)
    gallery = BinaryIndex.load(index)
    model = as_binarizer(str(run))
    planes = model.encode_query(
        read_queries(pairs, "query", model.dim), 512, bits=gallery.query_bits
    )
    best = exact_top(gallery, planes[:6], 1)[:, 0]
    every = gallery.planes(np.arange(gallery.ntotal))
    every = np.concatenate([every, every[np.repeat(best, 50)]])
    gallery = BinaryIndex(gallery.m, gallery.u, query_bits=gallery.query_bits)
    gallery.add(every[np.random.default_rng(0).permutation(len(every))])  # on both halves
    gallery.save(index)
    args = ["--index", index, "--workdir", str(run), "--queries", pairs, "--k", "10"]
    launch(2, *args, "--out", hits, command="search")
    with np.load(hits) as got:
        np.testing.assert_array_equal(got["ids"], exact_top(gallery, planes, 10))


# The gallery of `test_sharded_collectives_equal_one_process`: random codes of two versions.
_GALLERY = """
import numpy as np
from bebrjax.search import BinaryIndex

rng = np.random.default_rng(0)
m = 45
sign = np.array([-1, 1], np.int8)
wide, narrow = rng.choice(sign, (170, 3, m)), rng.choice(sign, (131, 2, m))
queries = rng.choice(sign, (7, 3, m))
whole = BinaryIndex(m, 2, version="a", block_size=64)
for start in range(0, 170, 40):  # both versions on both shards
    whole.add(wide[start : start + 40])
    whole.add(narrow[start : start + 31], version="b")
hamming = BinaryIndex(m, 0, "hamming", block_size=64)
hamming.add(wide[:, :1])
ids = rng.permutation(whole.ntotal)[:50]  # on both shards
rows = np.arange(50) % len(queries)
"""

_COLLECTIVES = """
import sys
from bebrjax import distributed
distributed.initialize()  # from the environment, as the launcher's processes do
import jax
from bebrjax.search import ShardedIndex
exec(sys.argv[2])
me = jax.process_index()
index = ShardedIndex(whole.rows(*[(0, 180), (180, whole.ntotal)][me]))  # uneven shards
words = index.local._queries(queries)[0]["words"]
found = {
    "count": (np.array([index.ntotal, index.offset]),),
    "ip": index.exact_ints(words[rows], ids),
    "all": index.exact_ints(words[3]),
    "versions": (index.versions_of(ids),),
    "search": index.search(queries, 25),
    "hamming": ShardedIndex(hamming.rows(*[(0, 90), (90, 170)][me])).search(queries[:, :1], 10),
}
np.savez(sys.argv[1], **{f"{k}_{i}": x for k, v in found.items() for i, x in enumerate(v)})
"""

_FREE_PORT = (
    "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
)


@pytest.mark.slow
def test_sharded_collectives_equal_one_process(tmp_path):
    """Each collective of `ShardedIndex` on 2 processes equals one `BinaryIndex` over all docs.

    Random codes (no ties to lean on), two versions on uneven shards:
    `exact_ints` over ids of both shards and over all, `versions_of`, SDC and
    Hamming `search`; both processes get the whole answer.
    """
    port = subprocess.run(
        [sys.executable, "-c", _FREE_PORT], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = {
        **os.environ,
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
        "JAX_NUM_PROCESSES": "2",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _COLLECTIVES, str(tmp_path / f"p{i}.npz"), _GALLERY],
            cwd=ROOT,
            env={**env, "JAX_PROCESS_ID": str(i)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(e[-2000:] for e in errors)
    g = {}
    exec(_GALLERY, g)  # the same gallery here, one index over every document
    whole, queries, ids, rows = (g[k] for k in ("whole", "queries", "ids", "rows"))
    words = whole._queries(queries)[0]["words"]
    expected = {
        "ip": whole.exact_ints(words[rows], ids),
        "all": whole.exact_ints(words[3]),
        "versions": (whole.doc_versions[ids],),
        "search": whole.search(queries, 25),
        "hamming": g["hamming"].search(queries[:, :1], 10),
    }
    assert set(expected["versions"][0].tolist()) == {0, 1}
    for i in range(2):
        with np.load(tmp_path / f"p{i}.npz") as got:
            assert got["count_0"].tolist() == [whole.ntotal, (0, 180)[i]]
            for key, arrays in expected.items():
                for j, x in enumerate(arrays):
                    np.testing.assert_array_equal(got[f"{key}_{j}"], x, err_msg=f"{key} {i}")


def test_start_up_names_what_is_missing(monkeypatch):
    for name in distributed.ENV:
        monkeypatch.delenv(name, raising=False)
    distributed.initialize()  # nothing given: one process, as always
    with pytest.raises(ConfigError, match=r"--num_processes \(or JAX_NUM_PROCESSES\)"):
        distributed.initialize("127.0.0.1:1234", process_id=0)
    with pytest.raises(ConfigError, match="--process_id=2: must be in"):
        distributed.initialize("127.0.0.1:1234", 2, 2)


SCRIPTS = sorted(
    f for f in os.listdir(os.path.join(ROOT, "launch")) if f.endswith((".sh", ".sbatch"))
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_launchers_parse(script):
    """Each launcher is valid bash, and its `bebrjax` lines name real commands and flags."""
    from test_docs import check_command, commands

    path = os.path.join(ROOT, "launch", script)
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    with open(path) as f:
        text = f.read()
    assert "bebrjax" in text
    found = commands(text)
    for words in found:
        check_command(words, f"{script}: {' '.join(words)}")
    if script in ("local.sh", "slurm.sbatch", "serving.sh", "compatible.sh"):
        assert found, script  # (the others build their command line in a variable)


@pytest.mark.slow
def test_local_launcher_trains_a_tiny_run(tmp_path):
    """launch/local.sh, run as a user would, on 2 forced CPU devices: a finished run."""
    overrides = [f"--config.{o}" for o in tiny_overrides(steps=4)]
    done = subprocess.run(
        ["bash", os.path.join(ROOT, "launch", "local.sh"), "configs/bebr/demo.py"]
        + [str(tmp_path / "run"), "--cpu-devices", "2", *overrides],
        cwd=ROOT,
        env={
            **os.environ,
            "XLA_FLAGS": "",
            "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "run" / "results.json") as f:
        run = json.load(f)
    assert run["train"]["devices"] == 2 and run["train"]["steps"] == 4
    assert 0 < run["retrieval"]["binary"]["R@10"] <= 1
    bad = subprocess.run(
        ["bash", os.path.join(ROOT, "launch", "local.sh"), "c.py", "w", "--cpu-devices", "x"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "positive integer" in bad.stderr


def test_launcher_refuses_a_bad_count():
    done = subprocess.run(
        ["bash", os.path.join(ROOT, "launch", "multiprocess.sh"), "zero", "c.py", "w"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "positive integer" in done.stderr
