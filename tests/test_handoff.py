import json
import os
import sys

import numpy as np
import pytest
from conftest import ROOT, tiny_overrides

from bebrjax.commands import ivf, search
from bebrjax.commands import to_faiss as to_faiss_command
from bebrjax.inference.corpus import encode_corpus
from bebrjax.inference.heldout import held_out, write_pairs
from bebrjax.search import BinaryIndex
from bebrjax.search import codes as codes_lib
from bebrjax.search.handoff import faiss_queries, to_faiss
from bebrjax.trainers import train

faiss = pytest.importorskip("faiss", reason="faiss-cpu is a dev/bench dependency")

RNG = np.random.default_rng(7)


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """faiss's OpenMP threads spin against jax's on a small machine: 2000 documents need one."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def random_planes(n, u, m, rng=RNG):
    return rng.choice(np.array([-1, 1], np.int8), size=(n, u + 1, m))


def make_index(n, u, m, metric="ip", **kwargs):
    planes = random_planes(n, u, m)
    planes[n - 10 :] = planes[3]  # equal codes: ties
    index = BinaryIndex(m, u, metric, block_size=512, **kwargs)
    index.add(planes)
    return index, planes


def hamming(query_planes, doc_planes):
    return (query_planes[:, None, 0] != doc_planes[None, :, 0]).sum(-1)


def integer_ip(query_planes, doc_planes):
    q = codes_lib.decode_int(query_planes).astype(np.int64)
    return q @ codes_lib.decode_int(doc_planes).astype(np.int64).T


def check_topk(scores, ids, truth, descending):
    """scores [Q, k] are the best k of truth [Q, N] and ids hold them, whatever the ties."""
    k = scores.shape[1]
    best = np.sort(truth, axis=1)[:, ::-1] if descending else np.sort(truth, axis=1)
    np.testing.assert_array_equal(scores, best[:, :k])
    np.testing.assert_array_equal(np.take_along_axis(truth, ids, 1), scores)
    for row, last, got in zip(truth, scores[:, -1], ids, strict=True):
        assert len(set(got)) == k
        above = row > last if descending else row < last
        assert set(np.flatnonzero(above)) <= set(got)  # only the last score's ties may differ


@pytest.mark.parametrize("m", [72, 45])
def test_flat_hamming_equals_bebrjax_with_ids(m):
    index, docs = make_index(2000, 0, m, "hamming")
    queries = random_planes(20, 0, m)
    queries[0] = docs[3]
    flat = to_faiss(index)
    assert isinstance(flat, faiss.IndexBinaryFlat) and flat.d == 8 * -(-m // 8)
    assert flat.ntotal == 2000
    got_d, got_i = flat.search(faiss_queries(index, queries[:, 0]), 50)  # [Q, m] planes too
    want_d, want_i = index.search(queries, 50)
    np.testing.assert_array_equal(got_d, want_d)
    np.testing.assert_array_equal(got_i, want_i)  # both break ties to the lower id
    check_topk(got_d, got_i, hamming(queries, docs), descending=False)


def test_flat_of_an_ip_index_of_one_plane_ranks_as_bebrjax():
    index, docs = make_index(2000, 0, 40)
    queries = random_planes(20, 0, 40)
    got_d, got_i = to_faiss(index).search(faiss_queries(index, queries), 30)
    scores, ids = index.search(queries, 30)  # (m - 2 hamming) / sqrt(m)
    np.testing.assert_array_equal(got_i, ids)
    np.testing.assert_allclose((40 - 2 * got_d) / np.sqrt(40), scores, rtol=1e-6)


@pytest.mark.parametrize("u, m", [(1, 64), (2, 72), (2, 45)])
def test_flat_scalar_quantizer_holds_the_exact_integers(u, m):
    index, docs = make_index(2000, u, m)
    queries = random_planes(20, u, m)
    flat = to_faiss(index)
    assert isinstance(flat, faiss.IndexScalarQuantizer) and flat.code_size == m
    ints = codes_lib.decode_int(docs)
    np.testing.assert_array_equal(flat.reconstruct_n(0, 2000), ints)
    stored = faiss.vector_to_array(flat.codes).reshape(2000, m)
    np.testing.assert_array_equal(stored.astype(np.int16) - 128, ints)  # the byte x + 128
    converted = faiss_queries(index, queries)
    assert converted.dtype == np.float32
    np.testing.assert_array_equal(converted, codes_lib.decode_int(queries))
    scores, ids = flat.search(converted, 40)
    check_topk(scores, ids, integer_ip(queries, docs), descending=True)


def test_queries_of_another_u_meet_the_integer_codes():
    index, docs = make_index(2000, 2, 64)
    queries = random_planes(20, 1, 80)  # u_q = 1, and wider: the first 64 coordinates
    scores, ids = to_faiss(index).search(faiss_queries(index, queries), 20)
    check_topk(scores, ids, integer_ip(queries[:, :, :64], docs), descending=True)


@pytest.mark.parametrize("u", [0, 1])
def test_ivf_and_hnsw_return_true_scores(u):
    index, docs = make_index(2000, u, 64)
    queries = random_planes(20, u, 64)
    converted = faiss_queries(index, queries)
    truth = hamming(queries, docs) if u == 0 else integer_ip(queries, docs)
    flat_scores, _ = to_faiss(index).search(converted, 10)
    ivf = to_faiss(index, "ivf", nlist=16, seed=3)
    assert ivf.nlist == 16 and ivf.ntotal == 2000
    ivf.nprobe = 16
    scores, ids = ivf.search(converted, 10)
    np.testing.assert_array_equal(scores, flat_scores)
    np.testing.assert_array_equal(np.take_along_axis(truth, ids, 1), scores)
    hnsw = to_faiss(index, "hnsw", hnsw_m=16)
    assert hnsw.ntotal == 2000
    scores, ids = hnsw.search(converted, 10)
    assert (ids >= 0).all()
    np.testing.assert_array_equal(np.take_along_axis(truth, ids, 1), scores)
    kinds = (
        (faiss.IndexBinaryIVF, faiss.IndexBinaryHNSW)
        if u == 0
        else (faiss.IndexIVF, faiss.IndexHNSWSQ)
    )
    assert isinstance(ivf, kinds[0]) and isinstance(hnsw, kinds[1])
    assert to_faiss(index, "ivf").nlist == round(4 * np.sqrt(2000))  # the default


def test_an_object_holding_a_binary_index_as_codes_is_handed_off():
    index, _ = make_index(300, 0, 64, "hamming")

    class Wrapper:
        codes = index

    assert to_faiss(Wrapper()).ntotal == 300
    with pytest.raises(TypeError, match="BinaryIndex"):
        to_faiss(object())


def test_versions_of_one_u_are_handed_off_and_mixed_u_refused():
    index, _ = make_index(200, 0, 64, version="old")
    new = random_planes(200, 1, 64)
    index.replace(np.arange(100), new[:100], "new")
    with pytest.raises(ValueError, match=r"different u: old \(u=0, 100 docs\), new \(u=1"):
        to_faiss(index)
    index.replace(np.arange(100, 200), new[100:], "new")  # backfill done: "old" holds none
    scores, ids = to_faiss(index).search(faiss_queries(index, new[:5]), 5)
    check_topk(scores, ids, integer_ip(new[:5], new), descending=True)


def test_refusals_name_the_problem():
    index, _ = make_index(100, 0, 64)
    with pytest.raises(ValueError, match="kind='pq'"):
        to_faiss(index, "pq")
    with pytest.raises(ValueError, match=r"nlist=101 must be an integer in \[1, 100\]"):
        to_faiss(index, "ivf", nlist=101)
    with pytest.raises(ValueError, match="hnsw_m=1"):
        to_faiss(index, "hnsw", hnsw_m=1)
    with pytest.raises(ValueError, match="one-plane queries"):
        faiss_queries(index, random_planes(2, 1, 64))
    with pytest.raises(ValueError, match="narrower"):
        faiss_queries(index, random_planes(2, 0, 32))
    with pytest.raises(ValueError, match="empty"):
        to_faiss(BinaryIndex(64, 1))


@pytest.mark.parametrize(
    "u, kind, read", [(0, "flat", "read_index_binary"), (1, "ivf", "read_index")]
)
def test_command_writes_a_faiss_index(tmp_path, capsys, u, kind, read):
    index, _ = make_index(500, u, 72)
    index.save(str(tmp_path / "index"))
    out = str(tmp_path / "gallery.faiss")
    assert (
        to_faiss_command.main(["--index", str(tmp_path / "index"), "--out", out, "--kind", kind])
        == 0
    )
    line, summary = capsys.readouterr().out.strip().split("\n")
    summary = json.loads(summary)
    assert line.startswith("wrote 500 documents as faiss")
    assert summary["documents"] == 500 and summary["kind"] == kind
    assert summary["bytes"] == os.path.getsize(out)
    back = getattr(faiss, read)(out)
    assert back.ntotal == 500 and type(back).__name__ == summary["faiss_class"]
    assert sorted(os.listdir(tmp_path)) == ["gallery.faiss", "index"]  # no temporary left
    before = os.path.getmtime(out)
    assert (
        to_faiss_command.main(["--index", str(tmp_path / "index"), "--out", out, "--kind", kind])
        == 2
    )
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert os.path.getmtime(out) == before  # kept
    argv = ["--index", str(tmp_path / "index"), "--out", out, "--kind", kind, "--overwrite"]
    assert to_faiss_command.main(argv) == 0 and getattr(faiss, read)(out).ntotal == 500


def test_command_refusals_are_one_line_and_write_nothing(tmp_path, capsys, monkeypatch):
    index, _ = make_index(100, 0, 64)
    index.save(str(tmp_path / "index"))
    out = str(tmp_path / "out.faiss")
    cases = [
        (["--index", str(tmp_path / "missing"), "--out", out], "missing"),
        (["--index", str(tmp_path / "index"), "--out", out, "--kind", "pq"], "--kind pq"),
        (
            ["--index", str(tmp_path / "index"), "--out", out, "--kind", "ivf", "--nlist", "500"],
            "nlist=500",
        ),
        (["--index", str(tmp_path / "index"), "--out", str(tmp_path / "no" / "f")], "No such file"),
    ]
    for argv, message in cases:
        assert to_faiss_command.main(argv) == 2
        stderr = capsys.readouterr().err
        assert stderr.startswith("error: ") and stderr.count("\n") == 1 and message in stderr
    monkeypatch.setitem(sys.modules, "faiss", None)
    assert to_faiss_command.main(["--index", str(tmp_path / "index"), "--out", out]) == 2
    assert capsys.readouterr().err == (
        "error: faiss is not installed: pip install faiss-cpu (bebrjax's bench extra)\n"
    )
    assert os.listdir(tmp_path) == ["index"]


@pytest.fixture(scope="module")
def one_plane_run(tmp_path_factory):
    """A tiny u = 0 binarizer served with code queries, its held-out pairs and their index."""
    run, tmp = tmp_path_factory.mktemp("u0"), tmp_path_factory.mktemp("u0_index")
    config = os.path.join(ROOT, "configs/bebr/demo.py:bits=1,query_bits=0")
    train(config, str(run), tiny_overrides(steps=4))
    pairs, index = str(tmp / "eval.npz"), str(tmp / "docs.bebr")
    write_pairs(pairs, held_out(str(run)))
    encode_corpus(str(run), pairs, index, progress=False)
    return str(run), pairs, index


@pytest.mark.slow
def test_search_command_with_faiss_equals_bebrjax_flat_and_ivf(one_plane_run, tmp_path, capsys):
    run, pairs, index = one_plane_run
    ivf_index = str(tmp_path / "docs.ivf")
    assert ivf.main(["--index", index, "--out", ivf_index, "--nlist", "4"]) == 0
    common = ["--workdir", run, "--queries", pairs, "--k", "20"]
    for where in (["--index", index], ["--index", ivf_index, "--nprobe", "2"]):
        hits = {}
        for engine in ("bebrjax", "faiss"):
            hits[engine] = str(tmp_path / f"{engine}.npz")
            argv = [*common, *where, "--engine", engine, "--out", hits[engine], "--overwrite"]
            assert search.main(argv) == 0
        with np.load(hits["bebrjax"]) as want, np.load(hits["faiss"]) as got:
            np.testing.assert_array_equal(got["ids"], want["ids"])
            np.testing.assert_array_equal(got["scores"], want["scores"])
            assert (np.diff(want["scores"], axis=1) == 0).mean() > 0.5  # 16 bits: ties abound


@pytest.mark.slow
def test_search_command_refuses_what_faiss_cannot_serve(
    one_plane_run, tmp_path, capsys, monkeypatch
):
    run, pairs, index = one_plane_run
    two_planes = str(tmp_path / "u1.bebr")
    wide = BinaryIndex(BinaryIndex.load(index).m, 1)
    wide.add(random_planes(50, 1, wide.m))
    wide.save(two_planes)
    common = ["--workdir", run, "--queries", pairs, "--k", "5", "--engine", "faiss"]
    out = ["--out", str(tmp_path / "no.npz")]
    cases = [
        (["--index", two_planes], "this index holds u = 1"),
        (["--index", index, "--asymmetric"], "not --asymmetric"),
        (["--index", index, "--query-bits", "2"], "not queries of 2 bits"),
        (
            ["--index", index, "--plan", "plan.json", "--queries", "m=" + pairs],
            "not a --plan",
        ),
    ]
    for args, message in cases:
        argv = [*common, *args, *out]
        if "--plan" in args:
            argv = [a for a in argv if a not in ("--workdir", run)]
        assert search.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    monkeypatch.setitem(sys.modules, "faiss", None)
    assert search.main([*common, "--index", index, *out]) == 2
    assert "faiss is not installed" in capsys.readouterr().err
    assert not os.path.exists(out[1])
