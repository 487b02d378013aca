import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bebrjax import sharding
from bebrjax.commands import encode, search
from bebrjax.commands import ivf as ivf_command
from bebrjax.inference.query import search_index
from bebrjax.search import (
    BinaryIndex,
    IndexFormatError,
    IVFIndex,
    ivf_nprobe,
    ivf_train,
    kmeans,
    topk,
)
from bebrjax.search import codes as codes_lib
from bebrjax.search.compiled import CompiledCache
from bebrjax.search.rescore import rescore

M, NLIST = 40, 12


def clustered_planes(n, u, m=M, seed=0):
    """Codes with cluster structure (IVF on uniform codes measures nothing), with duplicates."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((NLIST, m))
    x = centres[rng.integers(0, NLIST, n)] + 0.6 * rng.standard_normal((n, m))
    planes = [np.where(x > 0, 1, -1)]
    planes += [np.where(rng.standard_normal((n, m)) > 0, 1, -1) for _ in range(u)]
    planes = np.stack(planes, 1).astype(np.int8)
    planes[100:150] = planes[0]  # 50 copies: more ties than spare candidates
    return planes


@pytest.fixture(scope="module")
def galleries():
    """(planes, queries, BinaryIndex, IVFIndex) for u = 0 (Hamming), 1 and 2 (SDC)."""
    out = {}
    for u, metric in [(0, "hamming"), (1, "ip"), (2, "ip")]:
        planes = clustered_planes(2500, u, seed=u)
        queries = np.concatenate([planes[:1], planes[np.arange(5, 2500, 167)]])
        index = BinaryIndex(M, u, metric)
        index.add(planes)
        out[(u, metric)] = (planes, queries, index, IVFIndex.from_index(index, NLIST))
    return out


@pytest.mark.slow
def test_every_list_probed_equals_the_binary_index_on_1_and_8_devices(galleries):
    assert jax.device_count() == 8
    mesh = sharding.make_mesh(8)
    for (u, metric), (planes, queries, index, ivf) in galleries.items():
        expected = index.search(queries, 10)
        eight = IVFIndex.from_index(
            BinaryIndex(M, u, metric, mesh=mesh), NLIST, centroids=ivf.centroids
        )
        eight.add(planes)
        np.testing.assert_array_equal(eight.lists, ivf.lists)
        for got in (ivf.search(queries, 10, nprobe=NLIST), eight.search(queries, 10, NLIST)):
            for a, b in zip(expected, got, strict=True):
                np.testing.assert_array_equal(a, b, err_msg=f"u={u} {metric}")
        assert expected[1][0].tolist() == [0, *range(100, 109)]  # tied copies, lower ids first


def test_few_lists_give_the_exact_answer_over_their_documents(galleries):
    planes, queries, index, ivf = galleries[(1, "ip")]
    scores, ids = ivf.search(queries, 5, nprobe=2)
    probes = kmeans.probe(codes_lib.decode_int(queries).astype(np.float32), ivf.centroids, 2)
    for row, query in enumerate(queries):  # exact ranking of every probed document
        members = np.flatnonzero(np.isin(ivf.lists, probes[row]))
        ip, norm = index.exact_ints(codes_lib.pack(query[None])[0], members)
        best = topk.exact_order(topk.SdcScores(ip, norm), members, np.zeros_like(members))[:5]
        np.testing.assert_array_equal(ids[row], members[best])
        np.testing.assert_allclose(scores[row], ip[best] / np.sqrt(norm[best]) / 2, rtol=1e-6)
    exhaustive = index.search(queries, 5)[1]
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, exhaustive, strict=True)])
    assert 0.6 < recall < 1.0


def test_save_load_round_trip_and_bad_files(galleries, tmp_path):
    _, queries, index, ivf = galleries[(1, "ip")]
    path = str(tmp_path / "gallery.ivf")
    ivf.save(path)
    loaded = IVFIndex.load(path)
    assert isinstance(loaded.codes._words, np.memmap) and loaded.nlist == NLIST
    for a, b in zip(ivf.search(queries, 7, 3), loaded.search(queries, 7, 3), strict=True):
        np.testing.assert_array_equal(a, b)
    assert BinaryIndex.load(path).ntotal == index.ntotal  # still an exhaustive index
    index.save(str(tmp_path / "plain"))
    with pytest.raises(IndexFormatError, match="without inverted lists"):
        IVFIndex.load(str(tmp_path / "plain"))
    meta = json.loads((tmp_path / "gallery.ivf" / "ivf.json").read_text())
    (tmp_path / "gallery.ivf" / "ivf.json").write_text(json.dumps({**meta, "m": 64}))
    with pytest.raises(IndexFormatError, match="trained for m=64, the codes have m=40"):
        IVFIndex.load(path)
    (tmp_path / "gallery.ivf" / "ivf.json").write_text(json.dumps({**meta, "nlist": 5}))
    with pytest.raises(IndexFormatError, match=r"centroids.npy has shape \[12, 40\]"):
        IVFIndex.load(path)


@pytest.mark.parametrize(
    "act, message",
    [
        (lambda ivf, q: ivf.search(q, 5, nprobe=0), r"nprobe=0 must be an integer in \[1, 12\]"),
        (lambda ivf, q: ivf.search(q, 5, nprobe=13), r"nprobe=13 must be .* \[1, 12\]"),
        (lambda ivf, q: ivf.search(q, 2400, nprobe=1), "k=2400 but query .* raise nprobe"),
        (lambda ivf, q: ivf.search(q[:, :, :30], 5), "narrower than the index's m=40"),
        (lambda ivf, q: ivf.add(q[:, :1]), r"shape \[N, 2, 40\]"),
        (lambda ivf, q: ivf.train(q[:, :, :32]), r"the index's m=40"),
        (lambda ivf, q: IVFIndex.from_index(ivf.codes, 3, centroids=np.ones((3, 32))), "m=40"),
        (lambda ivf, q: IVFIndex(M, 1, nlist=4).search(q, 1), "not trained"),
        (lambda ivf, q: IVFIndex(M, 1, nlist=0), "nlist=0"),
    ],
)
def test_bad_input_is_one_line(galleries, act, message):
    _, queries, _, ivf = galleries[(1, "ip")]
    with pytest.raises(ValueError, match=message) as error:
        act(ivf, queries)
    assert "\n" not in str(error.value)


def test_kmeans_is_seeded_and_fills_every_list():
    points = np.random.default_rng(1).standard_normal((600, 8))
    a, b = kmeans.train(points, 16, seed=3), kmeans.train(points, 16, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, rtol=1e-5)
    assert len(np.unique(kmeans.assign(iter([points]), a))) == 16


def spherical_objective(points, centroids):
    """The spherical k-means objective: each unit point's cosine to its best centroid, summed."""
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    return float((unit.astype(np.float64) @ centroids.astype(np.float64).T).max(1).sum())


def test_lloyd_never_lowers_the_spherical_objective_and_beats_its_start():
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((8, 6))
    points = centres[rng.integers(0, 8, 500)] + 0.5 * rng.standard_normal((500, 6))
    # iters=0 is the seeded random start (8 of the points); each count continues it.
    objective = [
        spherical_objective(points, kmeans.train(points, 8, iters=i, seed=2)) for i in range(6)
    ]
    for before, after in zip(objective, objective[1:], strict=False):
        assert after >= before - 1e-3, objective
    assert objective[-1] > objective[0] + 0.05 * len(points), objective
    # And every centroid is its cluster's normalized mean (a fixed point after enough steps).
    centroids = kmeans.train(points, 8, iters=30, seed=2)
    assign = kmeans.assign(iter([points]), centroids)
    unit = kmeans.normalize(points)
    for c in range(8):
        mean = unit[assign == c].sum(0)
        np.testing.assert_allclose(centroids[c], mean / np.linalg.norm(mean), atol=1e-4)


def test_kmeans_assigns_in_blocks_without_changing_the_centroids(monkeypatch):
    points = np.random.default_rng(2).standard_normal((601, 8))  # 601: a padded last block
    whole = kmeans.train(points, 16, seed=4)
    monkeypatch.setattr(kmeans, "_BLOCK_PRODUCTS", 16 * 64)  # 64 points per block
    np.testing.assert_allclose(kmeans.train(points, 16, seed=4), whole, atol=1e-6)


def test_rescoring_ranks_the_shortlist_by_exact_float_products(galleries, tmp_path):
    _, queries, index, ivf = galleries[(1, "ip")]
    rng = np.random.default_rng(5)
    floats = rng.standard_normal((index.ntotal, 24)).astype(np.float32)
    floats[120] = floats[110]  # a tie between two copies of query 0's code: the lower id first
    np.save(tmp_path / "docs.npy", floats)
    vectors = rng.standard_normal((len(queries), 24)).astype(np.float32)
    vectors[0] = floats[110]
    unit = index.decoded(np.arange(index.ntotal)).astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    in_code_space = rng.standard_normal((len(queries), M)).astype(np.float32)
    cases = [
        (index, {}, vectors, str(tmp_path / "docs.npy"), floats),
        (ivf, {"nprobe": 3}, vectors, floats, floats),
        (ivf, {"nprobe": 3}, in_code_space, None, unit),  # asymmetric: decoded codes
    ]
    for source, probing, q, docs, brute_docs in cases:
        scores, ids = rescore(source, queries, q, 5, docs=docs, oversample=4, **probing)
        _, shortlist = source.search(queries, 20, **probing)
        brute = q.astype(np.float64) @ brute_docs.T.astype(np.float64)
        for row in range(len(queries)):
            best = sorted(shortlist[row], key=lambda i, r=row: (-brute[r, i], i))[:5]
            np.testing.assert_array_equal(ids[row], best)
            np.testing.assert_array_equal(scores[row], brute[row, best].astype(np.float32))
    assert rescore(index, queries[:1], vectors[:1], 40, docs=floats)[1][0, :2].tolist() == [
        110,
        120,
    ]
    for kwargs, message in [
        ({"docs": floats, "oversample": 0}, "oversample=0 must be a positive integer"),
        ({"docs": floats[:, :20]}, "float documents have width 20, the queries 24"),
        ({"docs": floats[:2000]}, "the float documents: 2000 rows, but the index holds"),
        ({"docs": str(tmp_path / "none.npy")}, "none.npy: not a readable .npy"),
        ({}, "asymmetric rescoring .* m=40; the queries have width 24"),
    ]:
        with pytest.raises(ValueError, match=message):
            rescore(index, queries, vectors, 5, **kwargs)


def assert_same_search(a, b, queries, k, nprobes):
    for nprobe in nprobes:
        for x, y in zip(a.search(queries, k, nprobe), b.search(queries, k, nprobe), strict=True):
            np.testing.assert_array_equal(x, y, err_msg=f"nprobe={nprobe}")


def test_replaced_codes_are_searched_in_the_lists_of_their_new_codes():
    planes = clustered_planes(600, 1)
    new = clustered_planes(200, 2, seed=7)
    ids = np.arange(1, 600, 3)
    queries = np.concatenate([planes[:4, :1], new[:4, :1]])
    codes = BinaryIndex(M, 1)
    codes.add(planes)
    index = IVFIndex.from_index(codes, NLIST, sample=300)
    index.search(queries, 5, NLIST)  # the device tiles of the old codes
    index.replace(ids, new, "v2")
    fresh_codes = BinaryIndex(M, 1)
    fresh_codes.add(planes)
    fresh_codes.replace(ids, new, "v2")
    fresh = IVFIndex.from_index(fresh_codes, NLIST, centroids=index.centroids)
    moved = kmeans.assign(iter([codes_lib.decode(new)]), index.centroids)
    np.testing.assert_array_equal(index.lists[ids], moved)
    np.testing.assert_array_equal(index.lists, fresh.lists)
    assert_same_search(index, fresh, queries, 5, (2, NLIST))
    # A change made to the shared codes directly reaches the lists and the tiles too.
    codes.replace(ids[:50], planes[:50], "default")
    fresh_codes.replace(ids[:50], planes[:50], "default")
    fresh = IVFIndex.from_index(fresh_codes, NLIST, centroids=index.centroids)
    np.testing.assert_array_equal(index.lists, fresh.lists)
    assert_same_search(index, fresh, queries, 5, (2, NLIST))


@pytest.mark.slow
def test_a_backfill_step_on_a_saved_ivf_index_keeps_its_lists(binarizer_run, tmp_path):
    workdir = str(binarizer_run[0])
    rng = np.random.default_rng(3)
    docs, step, queries = (tmp_path / name for name in ("docs.npy", "step.npz", "queries.npz"))
    np.save(docs, rng.standard_normal((300, 16)).astype(np.float32))
    replaced = np.arange(0, 300, 3)
    np.savez(step, doc=rng.standard_normal((100, 16)).astype(np.float32), ids=replaced)
    np.savez(queries, query=rng.standard_normal((20, 16)).astype(np.float32))
    plain, path = str(tmp_path / "docs.bebr"), str(tmp_path / "docs.ivf")
    assert encode.main(["--workdir", workdir, "--input", str(docs), "--index", plain]) == 0
    assert ivf_command.main(["--index", plain, "--out", path, "--nlist", "4"]) == 0
    before = IVFIndex.load(path)
    argv = ["--workdir", workdir, "--input", str(step), "--index", path, "--ids", str(step)]
    assert encode.main([*argv, "--version", "new"]) == 0
    after = IVFIndex.load(path)
    assert after.counts()["new"] == 100
    np.testing.assert_array_equal(after.centroids, before.centroids)
    fresh = IVFIndex.from_index(BinaryIndex.load(path), 4, centroids=before.centroids)
    np.testing.assert_array_equal(after.lists, fresh.lists)
    assert (after.lists[replaced] != before.lists[replaced]).any()  # replaced docs moved
    hits = str(tmp_path / "hits.npz")
    argv = ["--index", path, "--workdir", workdir, "--queries", str(queries), "--k", "10"]
    assert search.main([*argv, "--nprobe", "4", "--out", hits]) == 0
    expected, _ = search_index(fresh, str(queries), k=10, workdir=workdir, nprobe=4)
    with np.load(hits) as found:
        np.testing.assert_array_equal(found["ids"], expected)


def test_any_number_of_queries_probes_with_a_few_compiled_programs(galleries, monkeypatch):
    _, queries, _, index = galleries[(1, "ip")]
    monkeypatch.setattr(kmeans, "_PROBE_FNS", CompiledCache())
    scores, ids = index.search(queries[:9], 5, nprobe=2)
    for num in range(1, 9):
        part = index.search(queries[:num], 5, nprobe=2)
        np.testing.assert_array_equal(part[0], scores[:num])
        np.testing.assert_array_equal(part[1], ids[:num])
    assert len(kmeans._PROBE_FNS) == 2  # 8 and 16 queries
    monkeypatch.setattr(kmeans, "_BLOCK_PRODUCTS", 4 * 32)  # chunks of 4 queries
    for num in (1, 7):
        np.testing.assert_array_equal(index.search(queries[:num], 5, nprobe=2)[1], ids[:num])
    assert len(kmeans._PROBE_FNS) == 3  # and one of 4


def test_training_decodes_only_the_sample_and_assignment_decodes_in_chunks(monkeypatch):
    planes = clustered_planes(3000, 1)
    decode, decoded = codes_lib.decode, []
    monkeypatch.setattr(codes_lib, "decode", lambda p: decoded.append(len(p)) or decode(p))
    index = IVFIndex(M, 1, nlist=4)
    index.train(planes, sample=64, seed=3)
    assert decoded == [64]
    chosen = np.sort(np.random.default_rng(3).choice(3000, 64, replace=False))
    trained = kmeans.train(decode(planes[chosen]), 4, seed=3)  # the draw of the whole's rows
    np.testing.assert_array_equal(index.centroids, kmeans.normalize(trained))
    rows, decoded_rows = BinaryIndex.decoded, []
    monkeypatch.setattr(ivf_train, "_DECODE_BYTES", 4 * 2 * M * 100)  # 100 documents a chunk
    monkeypatch.setattr(
        BinaryIndex, "decoded", lambda self, i: decoded_rows.append(len(i)) or rows(self, i)
    )
    index.add(planes)
    assert max(decoded_rows) == 100 and sum(decoded_rows) == 3000
    np.testing.assert_array_equal(
        index.lists, kmeans.assign(iter([decode(planes)]), index.centroids)
    )


def test_kmeans_products_run_at_the_highest_precision():
    points, centroids = jnp.ones((8, 4)), jnp.ones((32, 4))
    jaxprs = [
        jax.make_jaxpr(kmeans._nearest)(points, centroids),
        jax.make_jaxpr(kmeans._lloyd, static_argnums=3)(
            points[None], jnp.ones((1, 8)), centroids, 2
        ),
        jax.make_jaxpr(functools.partial(kmeans._probe, nprobe=2, nlist=30))(points, centroids),
    ]
    for jaxpr in map(str, jaxprs):
        highest = jaxpr.count("precision=(Precision.HIGHEST, Precision.HIGHEST)")
        assert jaxpr.count("dot_general") == highest > 0, jaxpr


def test_the_default_nprobe_is_the_fewest_lists_recalling_095_and_search_uses_it(galleries):
    _, queries, index, trained = galleries[(1, "ip")]
    ivf = IVFIndex.from_index(index, NLIST, centroids=trained.centroids)
    nprobe, recall = ivf_nprobe.choose(ivf)
    assert ivf_nprobe.choose(ivf) == (nprobe, recall)  # seeded
    own = np.sort(np.random.default_rng(0).choice(index.ntotal, 256, replace=False))

    def recall_at(probes):  # R@10 of the exhaustive answer, each query's own document left out
        planes = index.planes(own)
        found, truth = ivf.search(planes, 11, probes)[1], index.search(planes, 11)[1]
        rows = zip(found, truth, own, strict=True)
        other = [(f[f != i][:10], t[t != i][:10]) for f, t, i in rows]
        return np.mean([len(np.intersect1d(f, t)) for f, t in other]) / 10

    assert nprobe == 2 and recall == pytest.approx(recall_at(2)) and recall >= 0.95
    assert recall_at(1) < 0.95  # the power of two below falls short
    assert ivf_nprobe.choose(ivf, target=1.01) == (NLIST, 1.0)  # none reaches it: every list
    assert ivf.nprobe is None and ivf.default_nprobe == NLIST  # none chosen: every list
    for a, b in zip(ivf.search(queries, 5), index.search(queries, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    ivf.nprobe = nprobe
    for a, b in zip(ivf.search(queries, 5), ivf.search(queries, 5, 2), strict=True):
        np.testing.assert_array_equal(a, b)


def test_ivf_json_stores_the_default_nprobe_and_an_old_one_without_it_loads(galleries, tmp_path):
    _, queries, index, trained = galleries[(1, "ip")]
    ivf = IVFIndex.from_index(index, NLIST, centroids=trained.centroids)
    ivf.nprobe = 3
    path, name = str(tmp_path / "gallery.ivf"), tmp_path / "gallery.ivf" / "ivf.json"
    ivf.save(path)
    meta = json.loads(name.read_text())
    assert meta["nprobe"] == 3 and meta["version"] == 1
    loaded = IVFIndex.load(path)
    assert loaded.nprobe == 3
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], ivf.search(queries, 5, 3)[1])
    del meta["nprobe"]  # as written before the field existed
    name.write_text(json.dumps(meta))
    assert IVFIndex.load(path).nprobe is None and IVFIndex.load(path).default_nprobe == NLIST
    for bad in (0, NLIST + 1, True, "4"):
        name.write_text(json.dumps({**meta, "nprobe": bad}))
        with pytest.raises(IndexFormatError, match=r"nprobe=.* is not in \[1, 12\]"):
            IVFIndex.load(path)


def test_the_ivf_command_measures_or_takes_the_default_nprobe(galleries, tmp_path, capsys):
    _, _, index, _ = galleries[(1, "ip")]
    plain, out = str(tmp_path / "plain"), str(tmp_path / "out.ivf")
    index.save(plain)
    argv = ["--index", plain, "--out", out, "--nlist", str(NLIST), "--overwrite"]
    assert ivf_command.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["nprobe"] == IVFIndex.load(out).nprobe >= 1
    assert summary["nprobe_recall"] >= 0.95 and "R@10" in lines[-2]
    assert ivf_command.main([*argv, "--nprobe", "5"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["nprobe"], summary["nprobe_recall"]) == (5, None)
    assert IVFIndex.load(out).nprobe == 5
    assert ivf_command.main([*argv, "--nprobe", "13"]) == 2
    assert "nprobe=13 must be in [1, 12]" in capsys.readouterr().err
