"""From a trained workdir to a served index: load, encode, search, export, serve."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, interruptible

from bebrjax import inference
from bebrjax.commands import encode, export, heldout, ivf, search
from bebrjax.data.upgrade_splits import load_labelled
from bebrjax.evaluators.compatibility import compatibility_matrix
from bebrjax.inference.corpus import encode_corpus
from bebrjax.inference.export import export_bundle
from bebrjax.inference.query import search_index
from bebrjax.search import BinaryIndex, IndexFormatError
from bebrjax.search import plan as plan_lib
from bebrjax.search.fusion import search_fused
from bebrjax.search.writer import IndexWriter
from bebrjax.serving import BundleError, load_bundle
from bebrjax.trainers.binarizer import build_model


def _inputs(n, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * rng.uniform(0.2, 5.0, (n, 1))).astype(np.float32)


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def _same_files(a, b):
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b))
    for name in names:
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), name


def test_load_encodes_as_trained_whatever_the_scale(binarizer_run):
    workdir, _ = binarizer_run
    model = inference.load(str(workdir))
    assert (model.dim, model.code_dim, model.loops) == (16, 16, 1)
    x = _inputs(600)
    planes = model.encode(x)
    assert planes.shape == (600, 2, 16) and planes.dtype == np.int8
    np.testing.assert_array_equal(model.encode(10 * x), planes)
    # the recurrent vectors are the model's own, on rows normalized as the data loader does
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    code = build_model(model.config).apply(model.encoder.variables, unit, train=False).code
    np.testing.assert_array_equal(model.vectors(x), np.asarray(code))


@pytest.mark.slow
def test_the_command_line_reproduces_the_runs_recall(binarizer_run, tmp_path, capsys):
    workdir, results = binarizer_run
    pairs, index, hits = (str(tmp_path / f) for f in ("eval.npz", "docs.bebr", "hits.npz"))
    assert heldout.main(["--workdir", str(workdir), "--out", pairs]) == 0
    argv = ["--workdir", str(workdir), "--input", pairs, "--index", index, "--batch-size", "48"]
    assert encode.main(argv) == 0
    capsys.readouterr()
    argv = ["--index", index, "--workdir", str(workdir), "--queries", pairs, "--k", "20"]
    assert search.main([*argv, "--out", hits, "--relevant", f"{pairs}:relevant"]) == 0
    recall = _last_json(capsys.readouterr().out)["recall"]
    binary = results["retrieval"]["binary"]
    assert recall == {k: binary[k] for k in ("R@1", "R@5", "R@10")}
    with np.load(hits) as saved:
        assert saved["ids"].dtype == np.int64 and saved["ids"].shape == (128, 20)
        assert saved["scores"].dtype == np.float32
        assert np.all(np.diff(saved["scores"], axis=1) <= 0)
    argv = [*argv[:-1], "1", "--out", hits, "--relevant", f"{pairs}:relevant", "--overwrite"]
    assert search.main(argv) == 0  # --k 1: only R@1 can be told
    assert _last_json(capsys.readouterr().out)["recall"] == {"R@1": binary["R@1"]}
    # inverted lists: every list probed is the exhaustive answer; rescoring reads float docs
    ivf_index, docs = str(tmp_path / "docs.ivf"), str(tmp_path / "docs.npy")
    assert ivf.main(["--index", index, "--out", ivf_index, "--nlist", "4"]) == 0
    assert _last_json(capsys.readouterr().out)["documents"] == 128
    with np.load(pairs) as saved:
        np.save(docs, saved["doc"])
    argv = ["--workdir", str(workdir), "--queries", pairs, "--k", "10", "--overwrite"]
    runs = {
        "ivf": [*argv, "--index", ivf_index, "--nprobe", "4"],
        "rescored": [*argv, "--index", ivf_index, "--nprobe", "2", "--rescore", docs],
    }
    for name, args in runs.items():
        assert search.main([*args, "--out", str(tmp_path / f"{name}.npz")]) == 0
    with np.load(hits) as exhaustive, np.load(tmp_path / "ivf.npz") as probed:
        np.testing.assert_array_equal(probed["ids"][:, :1], exhaustive["ids"])
    with np.load(tmp_path / "rescored.npz") as rescored:
        assert rescored["ids"].shape == (128, 10)
    longer = str(tmp_path / "longer.npy")  # a file longer than the index: not its documents
    np.save(longer, np.concatenate([np.load(docs), np.load(docs)[:1]]))
    for args, message in [
        (["--index", ivf_index, "--nprobe", "5"], "nprobe=5 must be an integer in [1, 4]"),
        (["--index", index, "--nprobe", "1"], "without inverted lists"),
        (["--index", index, "--rescore", docs, "--asymmetric"], "not both"),
        (["--index", index, "--rescore", longer], "129 rows, but the index holds 128"),
        (["--index", index, "--rescore", pairs], "an .npz archive"),
    ]:
        assert search.main([*argv, *args, "--out", str(tmp_path / "no.npz")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and len(err.splitlines()) == 1, err
    assert ivf.main(["--index", index, "--out", ivf_index, "--nlist", "4"]) == 2
    assert ivf.main(["--index", index, "--out", str(tmp_path / "x"), "--nlist", "200"]) == 2
    assert "nlist=200 must be in [1, 128]" in capsys.readouterr().err


def test_the_index_writer_matches_a_save(tmp_path):
    planes = np.where(np.random.default_rng(1).random((50, 3, 40)) < 0.5, 1, -1).astype(np.int8)
    saved = BinaryIndex(40, 2)
    saved.add(planes)
    saved.save(str(tmp_path / "saved"))
    writer = IndexWriter(str(tmp_path / "written"), m=40, u=2, count=50, job={"a": 1})
    for start in range(0, 50, 16):
        writer.write(planes[start : start + 16])
    writer.finish()
    _same_files(tmp_path / "saved", tmp_path / "written")
    assert not (tmp_path / "written.partial").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["killed", "ctrl_c"])
def test_encode_stopped_and_resumed_gives_the_identical_index(binarizer_run, tmp_path, sig):
    workdir, _ = binarizer_run
    corpus = tmp_path / "corpus.npy"
    np.save(corpus, _inputs(60_000, seed=2).astype(np.float16))
    out = tmp_path / "index"
    command = [sys.executable, "-m", "bebrjax", "encode", "--workdir", str(workdir)]
    command += ["--input", str(corpus), "--index", str(out), "--batch-size", "256"]
    progress = tmp_path / "index.partial" / "progress.json"
    proc = interruptible(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(progress.read_text())["rows"] >= 2560:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.002)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGINT:  # Ctrl-C: one line naming what to do, exit 130
        assert proc.returncode == 130, err
        said = [ln for ln in err.replace("\r", "\n").split("\n") if "interrupted" in ln]
        assert "Traceback" not in err and len(said) == 1, err
        assert "run the same command again to resume" in said[0]
    else:
        assert proc.returncode == -signal.SIGKILL, err
    assert not out.exists()
    with pytest.raises(IndexFormatError, match="unfinished index"):
        BinaryIndex.load(str(tmp_path / "index.partial"))
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert 0 < _last_json(done.stdout)["resumed_from"] < 60_000
    encode_corpus(
        str(workdir), str(corpus), str(tmp_path / "straight"), batch_size=256, progress=False
    )
    _same_files(out, tmp_path / "straight")


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda t: _npz(t / "a.npz", doc=_inputs(40, d=8)), "width d=16"),
        (lambda t: _npz(t / "a.npz", doc=_inputs(0)), "is empty"),
        (lambda t: _npz(t / "a.npz", doc=np.ones((40, 16), np.int32)), "expected float"),
        (lambda t: _npz(t / "a.npz", other=_inputs(40)), "no array 'doc'"),
        (lambda t: str(t / "missing.npy"), "no such file"),
        (
            lambda t: _npz(
                t / "a.npz", doc=np.where(np.arange(40)[:, None] == 37, np.nan, _inputs(40))
            ),
            "non-finite values (first at row 37)",
        ),
        (
            lambda t: _npz(
                t / "a.npz", doc=np.where(np.arange(40)[:, None] == 21, 0.0, _inputs(40))
            ),
            "row 21 is all zeros",
        ),
    ],
)
def test_encode_refuses_bad_input_in_one_line(binarizer_run, tmp_path, capsys, make, message):
    workdir, _ = binarizer_run
    path = make(tmp_path)
    out = tmp_path / "index"
    argv = ["--workdir", str(workdir), "--input", path, "--index", str(out), "--batch-size", "8"]
    assert encode.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1, err
    assert not out.exists() and not (tmp_path / "index.partial").exists()


def test_encode_keeps_an_existing_index_and_its_input(binarizer_run, tmp_path, capsys):
    workdir, _ = binarizer_run
    path = _npz(tmp_path / "a.npz", doc=_inputs(40))
    out = tmp_path / "index"
    argv = ["--workdir", str(workdir), "--input", path, "--index", str(out)]
    assert encode.main(argv) == 0
    before = (out / "codes.npy").read_bytes()
    assert encode.main(argv) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "codes.npy").read_bytes() == before
    assert encode.main([*argv, "--overwrite"]) == 0
    argv = ["--workdir", str(workdir), "--input", path, "--overwrite", "--index"]
    assert encode.main([*argv, path]) == 2
    assert "would replace its own input" in capsys.readouterr().err
    (tmp_path / "file").write_text("keep")
    assert encode.main([*argv, str(tmp_path / "file") + "/"]) == 2
    assert "is not a directory; it is not replaced" in capsys.readouterr().err
    assert encode.main([*argv, str(tmp_path / "new" / "deeper" / "index")]) == 0
    assert (tmp_path / "file").read_text() == "keep" and os.path.isfile(path)


def test_load_refuses_what_it_cannot_load(binarizer_run, tmp_path):
    workdir, _ = binarizer_run
    with pytest.raises(inference.LoadError, match="no such directory"):
        inference.load(str(tmp_path / "nothing"))
    with pytest.raises(inference.LoadError, match="no config.json"):
        inference.load(str(tmp_path))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(workdir, unfinished)
    os.remove(unfinished / "results.json")
    with pytest.raises(inference.LoadError, match="has not finished"):
        inference.load(str(unfinished))
    assert inference.load(str(unfinished), step=8).encoder.step == 8
    with pytest.raises(inference.LoadError, match="no checkpoint at step 3"):
        inference.load(str(unfinished), step=3)
    config = json.loads((workdir / "config.json").read_text())
    (unfinished / "config.json").write_text(json.dumps({**config, "trainer": "mystery"}))
    with pytest.raises(inference.LoadError, match="trainer 'mystery' cannot be loaded"):
        inference.load(str(unfinished))


def _serve(tmp_path, source: str, args: list[str]) -> dict:
    """Runs a serving script in a fresh one-device process; its last JSON line."""
    script = tmp_path / "serve.py"
    script.write_text(source)
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "XLA_FLAGS": ""},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return _last_json(proc.stdout)


# Makes the training stack unimportable in a serving script (BLOCKED stays defined).
BLOCK_TRAINING_STACK = """BLOCKED = ("flax", "optax", "orbax", "ml_collections")
real_import = builtins.__import__
def guarded(name, *args, **kwargs):
    if name.split(".")[0] in BLOCKED:
        raise ImportError(f"blocked: {name}")
    return real_import(name, *args, **kwargs)
builtins.__import__ = guarded
"""


SERVE = (
    """
import builtins, json, sys
import jax, numpy as np
x = np.load(sys.argv[2])
# 1. plain jax, before bebrjax is imported
plain = np.asarray(jax.export.deserialize(open(sys.argv[1] + "/encoder.jax", "rb").read()).call(x))
# 2. bebrjax's serving loader, with the training stack unimportable
"""
    + BLOCK_TRAINING_STACK
    + """from bebrjax.serving import load_bundle
bundle = load_bundle(sys.argv[1])
served = bundle.encode(x)
scores, ids = bundle.search(x[:50], k=5)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
builtins.__import__ = real_import
# 3. the workdir itself, loaded on this process's single device
from bebrjax.inference import load
model = load(sys.argv[3])
direct = model.encode(x)
np.savez(sys.argv[4], plain=plain, served=served, direct=direct, ids=ids, scores=scores)
print(json.dumps({"devices": jax.device_count(), "loaded": loaded}))
"""
)


@pytest.fixture(scope="module")
def bundle(binarizer_run, tmp_path_factory):
    workdir, _ = binarizer_run
    tmp = tmp_path_factory.mktemp("bundle")
    docs = _inputs(300, seed=3)
    np.save(tmp / "docs.npy", docs)
    encode_corpus(str(workdir), str(tmp / "docs.npy"), str(tmp / "index"), progress=False)
    manifest = export_bundle(str(workdir), str(tmp / "bundle"), index=str(tmp / "index"))
    return tmp / "bundle", manifest


@pytest.mark.slow
def test_the_bundle_serves_with_jax_and_numpy_alone(binarizer_run, bundle, tmp_path):
    workdir, _ = binarizer_run
    path, manifest = bundle
    assert manifest["function"]["input"] == {"shape": ["N", 16], "dtype": "float32"}
    assert manifest["function"]["output"] == {"shape": ["N", 2, 16], "dtype": "int8"}
    assert {"cpu", "cuda"} <= set(manifest["function"]["platforms"])
    assert (manifest["m"], manifest["u"], manifest["normalization"]) == (16, 1, "l2")
    assert set(manifest["files"]) == {
        "encoder.jax",
        "query.jax",  # the demo's queries are served at 4 bits
        "index/header.json",
        "index/codes.npy",
        "index/inv_norms.npy",
    }
    x = _inputs(1000, seed=4)
    np.save(tmp_path / "x.npy", x)
    args = [str(path), str(tmp_path / "x.npy"), str(workdir), str(tmp_path / "out.npz")]
    assert _serve(tmp_path, SERVE, args) == {"devices": 1, "loaded": []}
    model = inference.load(str(workdir))  # on the 8 devices that trained it
    expected = model.encode(x)
    out = np.load(tmp_path / "out.npz")
    for name in ("plain", "served", "direct"):
        np.testing.assert_array_equal(out[name], expected, err_msg=name)
    index = BinaryIndex.load(str(path / "index"))
    scores, ids = index.search(model.encode_query(x[:50]), 5)  # queries served at 4 bits
    np.testing.assert_array_equal(out["ids"], ids)
    np.testing.assert_array_equal(out["scores"], scores)


def test_search_refuses_bad_requests_in_one_line(binarizer_run, bundle, tmp_path, capsys):
    workdir, _ = binarizer_run
    index = str(bundle[0] / "index")
    queries = _npz(tmp_path / "q.npz", query=_inputs(5), narrow=_inputs(5, d=8))
    np.save(tmp_path / "relevant.npy", np.arange(4))
    other = BinaryIndex(32, 0)  # wider than the model's codes
    other.add(np.ones((3, 1, 32), np.int8))
    other.save(str(tmp_path / "other"))
    hits = str(tmp_path / "hits.npz")
    for args, message in [
        (["--index", index, "--k", "301"], "k=301 must be in [1, 300]"),
        (["--index", str(tmp_path / "other")], "the index holds codes of width m=32"),
        (["--index", index, "--key", "narrow"], "the model encodes rows of width d=16"),
        (["--index", index, "--relevant", str(tmp_path / "relevant.npy")], "4 relevant ids for 5"),
        (["--index", index, "--relevant", str(tmp_path / "nope.npy")], "nope.npy: no such file"),
        (["--index", index, "--batch-size", "0"], "batch size 0: must be > 0"),
        (["--index", str(tmp_path)], "not a saved index"),
    ]:
        argv = ["--workdir", str(workdir), "--queries", queries, "--out", hits, *args]
        assert search.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and len(err.splitlines()) == 1, err
        assert not os.path.exists(hits)


def test_export_refuses_bad_requests_in_one_line(binarizer_run, bundle, tmp_path, capsys):
    workdir, _ = binarizer_run
    other = BinaryIndex(32, 0)  # wider than the model's codes
    other.add(np.ones((3, 1, 32), np.int8))
    other.save(str(tmp_path / "other"))
    out = str(tmp_path / "new_bundle")
    for extra, message in [
        (["--out", str(bundle[0])], "exists; pass --overwrite"),
        (["--platforms", "gpu"], "platforms gpu: expected some of cpu, cuda, rocm, tpu"),
        (["--part", "psi"], "has no part 'psi'"),
        (["--index", str(tmp_path / "other")], "holds codes of width m=32"),
    ]:
        argv = ["--workdir", str(workdir), "--out", out, *extra]
        assert export.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and len(err.splitlines()) == 1, err
        assert not os.path.exists(out)
    assert load_bundle(str(bundle[0])).manifest["files"]  # the existing bundle is untouched


@pytest.mark.parametrize("name", ["encoder.jax", "index/codes.npy", "manifest.json"])
def test_an_altered_bundle_is_refused(bundle, tmp_path, name):
    path, _ = bundle
    copy = tmp_path / "bundle"
    shutil.copytree(path, copy)
    target = copy / name
    data = bytearray(target.read_bytes())
    if name == "manifest.json":
        target.write_text(json.dumps({**json.loads(data), "version": 99}))
        match = "format version 99"
    else:
        data[-1] ^= 1
        target.write_bytes(bytes(data))
        match = f"{name} does not match its sha256"
    with pytest.raises(BundleError, match=match):
        load_bundle(str(copy))
    target.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(BundleError, match=name if name != "manifest.json" else "not valid JSON"):
        load_bundle(str(copy))


def test_a_bundle_with_an_unlisted_file_is_refused(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle[0], copy)
    (copy / "index" / "extra.npy").write_bytes(b"x")
    with pytest.raises(BundleError, match="not listed: index/extra.npy"):
        load_bundle(str(copy))


@pytest.mark.slow
def test_upgrade_runs_load_and_give_their_results_back(compare_run, tmp_path):
    workdir, results = compare_run
    runs = inference.load(str(workdir))  # trained on 1 device, loaded on 8
    assert set(runs) == set(results["methods"])
    run = runs["bict"]
    assert set(run.parts) == {"old", "new", "psi"} and set(runs["bct"].parts) == {"old", "new"}
    data, split = load_labelled(run.config)
    queries, gallery = data.subset(split.query), data.subset(split.gallery)
    stored = run.old(gallery.x)
    embeddings = {
        "old": (run.old(queries.x), stored),
        "new": (run.new(queries.x), run.new(gallery.x)),
        "paragon": (run.new(queries.x), run.new(gallery.x)),
        "adapted": (None, run.upgrade(stored)),
    }
    matrix = compatibility_matrix(
        embeddings, queries.y, gallery.y, ks=(1, 5, 10), fars=(1e-2, 1e-3)
    )["matrix"]
    for cell in ("old/old", "new/new", "new->old", "new->psi(old)"):
        assert matrix[cell]["mAP@R"] == pytest.approx(
            results["methods"]["bict"]["matrix"][cell]["mAP@R"], abs=1e-6
        ), cell
    manifest = export_bundle(run, str(tmp_path / "psi"), part="psi")
    assert manifest["kind"] == "adapter" and manifest["function"]["input"]["shape"] == ["N", 32]
    np.testing.assert_array_equal(
        load_bundle(str(tmp_path / "psi")).encode(stored[:100]), run.upgrade(stored[:100])
    )
    with pytest.raises(inference.LoadError, match="has no part 'psi'"):
        runs["bct"].upgrade(stored)


@pytest.fixture(scope="module")
def plan_bundle(binarizer_run, tmp_path_factory):
    """(bundle path, manifest, plan path, index path) of a two-version plan bundle.

    The plan's query models "old" and "new" are the one tiny binarizer run
    under two names; the index holds old documents, a third of them
    replaced by "new" codes of other vectors.
    """
    workdir, _ = binarizer_run
    tmp = tmp_path_factory.mktemp("plan")
    model = inference.load(str(workdir))
    queries = _inputs(200, seed=5)
    docs = queries + 0.5 * _inputs(200, seed=6)
    codes = (model.encode(queries), model.encode(docs))
    info = {"workdir": str(workdir), "step": model.encoder.step, "m": 16, "u": 1}
    plan = plan_lib.fit(
        {"old": codes, "new": codes},
        {"old": ("old", {"old": 1.0, "new": 0.5}), "new": ("new", {"new": 1.0})},
        {"old": info, "new": info},
    )
    plan.save(str(tmp / "plan.json"))
    index = BinaryIndex(16, 1, version="old")
    index.add(model.encode(_inputs(300, seed=3)))
    ids = np.arange(0, 300, 3)
    index.replace(ids, model.encode(_inputs(len(ids), seed=7)), "new")
    index.save(str(tmp / "index"))
    manifest = export_bundle(
        None, str(tmp / "bundle"), plan=str(tmp / "plan.json"), index=str(tmp / "index")
    )
    return tmp / "bundle", manifest, tmp / "plan.json", tmp / "index"


PLAN_SERVE = (
    """
import builtins, json, sys
import numpy as np
"""
    + BLOCK_TRAINING_STACK
    + """from bebrjax.serving import load_bundle
bundle = load_bundle(sys.argv[1])
with np.load(sys.argv[2]) as queries:
    scores, ids = bundle.search_versions({name: queries[name] for name in queries.files}, k=7)
np.savez(sys.argv[3], scores=scores, ids=ids)
print(json.dumps({"loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""
)


@pytest.mark.slow
def test_a_plan_bundle_searches_versions_as_the_library_does(binarizer_run, plan_bundle, tmp_path):
    workdir, _ = binarizer_run
    path, manifest, plan_path, index_path = plan_bundle
    model = inference.load(str(workdir))
    assert manifest["kind"] == "plan" and set(manifest["plan"]["models"]) == {"old", "new"}
    described = manifest["plan"]["models"]["new"]
    assert described["file"] == "encoders/new.jax" and described["step"] == model.encoder.step
    assert (described["d"], described["m"], described["u"]) == (16, 16, 1)
    assert described["output"] == {"shape": ["N", 2, 16], "dtype": "int8"}
    assert {"plan.json", "encoders/old.jax", "encoders/new.jax", "index/codes.npy"} <= set(
        manifest["files"]
    )
    plan = plan_lib.load(str(plan_path))
    bundle = load_bundle(str(path))
    assert bundle.models == ("old", "new") and bundle.plan.to_dict() == plan.to_dict()
    queries = {"old": _inputs(40, seed=8), "new": _inputs(40, seed=9)}
    np.testing.assert_array_equal(
        bundle.encode(queries["new"], model="new"), model.encode(queries["new"])
    )
    # the library: the index, the run's own codes, the plan restricted to the index's versions
    index = BinaryIndex.load(str(index_path))
    planes = {name: model.encode(x) for name, x in queries.items()}
    fusion = plan.only(list(index.versions)).fusion()
    scores, ids = search_fused(index, planes, fusion, 7)
    # a process with the bundle alone, the training stack unimportable
    np.savez(tmp_path / "queries.npz", **queries)
    args = [str(path), str(tmp_path / "queries.npz"), str(tmp_path / "out.npz")]
    assert _serve(tmp_path, PLAN_SERVE, args) == {"loaded": []}
    with np.load(tmp_path / "out.npz") as served:
        np.testing.assert_array_equal(served["ids"], ids)
        np.testing.assert_array_equal(served["scores"], scores)
    got_scores, got_ids = bundle.search_versions(queries, 7)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_scores, scores)


def test_a_plan_bundle_refuses_requests_it_cannot_answer(plan_bundle, tmp_path):
    path, _, _, _ = plan_bundle
    bundle = load_bundle(str(path))
    x = _inputs(4)
    with pytest.raises(ValueError, match="name a model.*'old', 'new'"):
        bundle.encode(x)
    with pytest.raises(ValueError, match="no query model 'mystery'.*'old', 'new'"):
        bundle.encode(x, model="mystery")
    with pytest.raises(BundleError, match="search_versions"):
        bundle.search(x, 5)
    with pytest.raises(BundleError, match="a plan bundle"):
        bundle.input_shape  # noqa: B018 - the property raises
    with pytest.raises(ValueError, match=r"\['mystery'\] that the plan does not know"):
        bundle.search_versions({"old": x, "new": x, "mystery": x}, 5)
    with pytest.raises(ValueError, match=r"no queries of model\(s\) \['new'\]"):
        bundle.search_versions({"old": x}, 5)
    copy = tmp_path / "bundle"
    shutil.copytree(path, copy)
    target = copy / "encoders" / "old.jax"
    target.write_bytes(target.read_bytes()[:-1])
    with pytest.raises(BundleError, match="encoders/old.jax does not match its sha256"):
        load_bundle(str(copy))
    (copy / "plan.json").unlink()
    with pytest.raises(BundleError, match="missing: plan.json"):
        load_bundle(str(copy))


def test_export_refuses_bad_plans_in_one_line(binarizer_run, plan_bundle, tmp_path, capsys):
    workdir, _ = binarizer_run
    _, _, plan_path, index_path = plan_bundle
    plan = json.loads(plan_path.read_text())
    step = plan["models"][0]["step"]

    def edited(name, **changes):
        models = [{**m, **changes} if m["name"] == name else m for m in plan["models"]]
        out = tmp_path / f"{name}-{'-'.join(changes)}.json"
        out.write_text(json.dumps({**plan, "models": models}))
        return str(out)

    old_only = BinaryIndex(16, 1, version="old")
    old_only.add(np.ones((3, 2, 16), np.int8))
    old_only.save(str(tmp_path / "old_only"))
    gone = str(tmp_path / "gone")
    out = str(tmp_path / "new_bundle")
    for args, message in [
        (
            ["--plan", edited("new", workdir=gone)],
            f"query model 'new' of the plan: {gone}: no such",
        ),
        (["--plan", edited("old", step=3)], f"has step={step}; the plan records step=3"),
        (["--plan", edited("new", u=2)], "has u=1; the plan records u=2"),
        (
            ["--plan", str(plan_path), "--index", str(tmp_path / "old_only")],
            "the plan names version(s) ['new'] that the index lacks",
        ),
        (["--plan", str(plan_path), "--workdir", str(workdir)], "exactly one of"),
        ([], "exactly one of"),
        (["--plan", str(plan_path), "--part", "new"], "--part new: a plan bundle"),
        (["--plan", str(tmp_path / "nope.json")], "no such scoring plan"),
    ]:
        assert export.main(["--out", out, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and len(err.splitlines()) == 1, err
        assert not os.path.exists(out)
    assert export.main(["--out", out, "--plan", str(plan_path), "--platforms", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert _last_json(printed)["kind"] == "plan" and "encoders/new.jax" in printed
    assert load_bundle(out).models == ("old", "new")


def test_asymmetric_rescoring_of_a_sharded_index_is_refused_in_one_line(binarizer_run):
    from bebrjax.errors import DataError
    from bebrjax.search import ShardedIndex

    workdir, _ = binarizer_run
    model = inference.load(str(workdir))
    x = np.random.default_rng(0).standard_normal((40, model.dim)).astype(np.float32)
    local = BinaryIndex(model.code_dim, model.loops)
    local.add(model.encode(x))
    with pytest.raises(DataError, match="--asymmetric decodes the shortlist's codes"):
        search_index(ShardedIndex(local), x, k=5, workdir=str(workdir), asymmetric=True)
