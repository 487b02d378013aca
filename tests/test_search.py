import json
import os
import tracemalloc
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import KERNEL_PARAMS

from bebrjax import sharding
from bebrjax.errors import DataError
from bebrjax.search import (
    BinaryIndex,
    FloatIndex,
    IndexFormatError,
    ShardedIndex,
    backfill,
    band,
    kernels,
    safe_write,
    scoring,
    storage,
    topk,
)
from bebrjax.search import codes as codes_lib
from bebrjax.search import rescore as rescore_lib
from bebrjax.search.scoring import KERNELS
from bebrjax.search.writer import IndexWriter

RNG = np.random.default_rng(0)


def random_planes(n, u, m, rng=RNG):
    return rng.choice(np.array([-1, 1], np.int8), size=(n, u + 1, m))


def exact_ranking(q_ints, d_ints, k):
    """Top k by the exact <q, d> / ||d|| of integer codes, ties to the lower id: ids [Q, k]."""
    ip, norm = q_ints @ d_ints.T, np.einsum("nm,nm->n", d_ints, d_ints)
    keys = [
        [Fraction(int(v) * abs(int(v)), int(n)) for v, n in zip(row, norm, strict=True)]
        for row in ip
    ]
    return np.array([sorted(range(len(norm)), key=lambda i: (-row[i], i))[:k] for row in keys])


def brute_force(query_planes, doc_planes, k, metric):
    """Exact top-k: float64 scores, and ids with ties to the lower id."""
    q = codes_lib.decode(query_planes).astype(np.float64)
    d = codes_lib.decode(doc_planes).astype(np.float64)
    if metric == "hamming":
        dist = (d.shape[1] - q @ d.T) / 2
        ids = np.broadcast_to(np.arange(len(d)), dist.shape)
        order = np.lexsort((ids, dist), axis=1)[:, :k]
        return np.take_along_axis(dist, order, 1), order
    order = exact_ranking(
        *(codes_lib.decode_int(x).astype(np.int64) for x in (query_planes, doc_planes)), k
    )
    score = (q @ d.T) / np.linalg.norm(d, axis=1)
    return np.take_along_axis(score, order, 1), order


@pytest.mark.parametrize("m", [1, 31, 32, 70])
@pytest.mark.parametrize("u", [0, 1, 2, 3])
def test_pack_unpack_round_trip_and_norms(m, u):
    planes = random_planes(20, u, m)
    words = codes_lib.pack(planes)
    assert words.dtype == np.uint32 and words.shape == (20, u + 1, codes_lib.num_words(m))
    np.testing.assert_array_equal(codes_lib.unpack(words, m), planes)
    b = codes_lib.decode(planes).astype(np.float64)
    np.testing.assert_allclose(
        codes_lib.inverse_norms(planes), 1 / np.linalg.norm(b, axis=1), rtol=1e-6
    )


@pytest.mark.parametrize(
    "m, u, metric", [(37, 0, "hamming"), (64, 0, "ip"), (70, 1, "ip"), (33, 2, "ip"), (50, 3, "ip")]
)
@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_search_equals_brute_force_including_ties(m, u, metric, kernel):
    docs = random_planes(1100, u, m)
    docs[[7, 300, 901]] = docs[500]  # exact ties across blocks
    queries = random_planes(30, u, m)
    queries[0] = docs[500]
    index = BinaryIndex(m, u, metric, kernel=kernel, block_size=256, group=32, query_batch=16)
    index.add(docs[:600])
    index.add(docs[600:])
    scores, ids = index.search(queries, 25)
    want_scores, want_ids = brute_force(queries, docs, 25, metric)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
    assert ids[0, :4].tolist() == [7, 300, 500, 901]
    assert scores.dtype == np.float32 and ids.dtype == np.int64


def scaled_codes(m, rng=RNG):
    """(s, 1.5 s, 0.5 s) for a random sign vector s: one-plane s, two-plane (s, s) and (s, -s)."""
    s = random_planes(1, 0, m, rng)[0]
    return s, np.concatenate([s, s]), np.concatenate([s, -s])


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_equal_cosines_rank_by_id_across_blocks(kernel):
    m = 45  # the reported case: 1.5 s at doc 10 and 0.5 s at doc 51 came back [51, 10]
    s, big, small = scaled_codes(m)
    inv = codes_lib.inverse_norms(np.stack([big, small])) * np.float32(0.5)
    assert np.float32(3 * m) * inv[0] < np.float32(m) * inv[1]  # the floats favour 0.5 s
    docs = random_planes(400, 1, m)
    tied = {10: big, 51: small, 150: small, 300: big, 399: small}  # blocks of 128
    for i, code in tied.items():
        docs[i] = code
    index = BinaryIndex(m, 1, kernel=kernel, block_size=128, query_batch=8)
    index.add(docs)
    assert index.search(s[None], 2)[1].tolist() == [[10, 51]]
    queries = np.concatenate([big[None], random_planes(6, 1, m)])
    scores, ids = index.search(queries, 400)  # the whole ranking
    want = exact_ranking(*(codes_lib.decode_int(x).astype(np.int64) for x in (queries, docs)), 400)
    np.testing.assert_array_equal(ids, want)
    assert (np.diff(scores, axis=1) <= 0).all()
    assert ids[0, :5].tolist() == sorted(tied) and len(set(scores[0, :5].tolist())) == 1


def test_more_ties_than_spare_candidates_are_ranked_over_a_shortlist(monkeypatch):
    m, rng = 45, np.random.default_rng(1)  # its own generator: the second query is certified
    _, big, small = scaled_codes(m, rng)
    docs = random_planes(300, 1, m, rng)
    tied = np.arange(23, 300, 6)  # 47 > topk.SPARE + k: no certificate
    docs[tied] = np.where((np.arange(len(tied)) % 2 == 1)[:, None, None], big, small)
    resolved, real = [], band._Band.resolve
    monkeypatch.setattr(band._Band, "resolve", lambda *a: resolved.append(1) or real(*a))
    index = BinaryIndex(m, 1, block_size=128)
    index.add(docs)
    monkeypatch.setattr(index, "exact_ints", no_whole_gallery(index.exact_ints, len(docs)))
    queries = np.stack([big, random_planes(1, 1, m, rng)[0]])
    scores, ids = index.search(queries, 10)
    assert resolved == [1] and ids[0].tolist() == tied[:10].tolist()
    np.testing.assert_allclose(scores[0], 1.5 * np.sqrt(m), rtol=1e-6)
    q_ints, doc_ints = (codes_lib.decode_int(x).astype(np.int64) for x in (queries, docs))
    np.testing.assert_array_equal(ids, exact_ranking(q_ints, doc_ints, 10))


def no_whole_gallery(exact_ints, n):
    """`exact_ints` that fails when asked for every document, or for more than n // 4."""

    def bounded(query_words, ids=None):
        assert ids is not None and len(ids) <= n // 4, "the host was handed O(N) documents"
        return exact_ints(query_words, ids)

    return bounded


def duplicated_gallery(u, n=2400, m=45, seed=5):
    """A gallery where each query's best code is stored > k + SPARE times, and its queries."""
    rng = np.random.default_rng(seed)
    docs, queries = random_planes(n, u, m, rng), random_planes(5, u, m, rng)
    docs[np.arange(7, n, 29)] = queries[0]  # 83 copies, over blocks
    docs[np.arange(n - 60, n)] = queries[1]  # 60 copies at the end
    near = queries[2].copy()
    near[0, :2] *= -1  # 2 bits from query 2, so not its best code: copies tie at its k-th
    docs[np.arange(11, n, 41)] = near
    docs[np.arange(5, n, 53)] = queries[2]  # 46 exact matches, some ahead of k
    return docs, queries


@pytest.mark.parametrize(
    "u, kernel",
    [
        (0, "popcount"),
        pytest.param(1, "popcount", marks=pytest.mark.slow),
        pytest.param(1, "matmul", marks=pytest.mark.slow),
    ],
)
def test_duplicates_past_the_spare_candidates_never_reach_the_whole_gallery(u, kernel, monkeypatch):
    docs, queries = duplicated_gallery(u)
    want = exact_ranking(*(codes_lib.decode_int(x).astype(np.int64) for x in (queries, docs)), 64)
    resolved, real = [], band._Band.resolve
    monkeypatch.setattr(band._Band, "resolve", lambda self, r: resolved.extend(r) or real(self, r))
    one = BinaryIndex(45, u, kernel=kernel, block_size=256, query_batch=8)
    eight = BinaryIndex(45, u, kernel=kernel, block_size=256, mesh=sharding.make_mesh(8))
    for index, ks in ((one, (1, 10, 64)), (eight, (10,))):
        index.add(docs)
        monkeypatch.setattr(index, "exact_ints", no_whole_gallery(index.exact_ints, len(docs)))
        for k in ks:
            np.testing.assert_array_equal(index.search(queries, k)[1], want[:, :k])
    sharded = ShardedIndex(one)  # one process: the same code as on several
    monkeypatch.setattr(sharded, "_exact_all", lambda *a: pytest.fail("the whole gallery"))
    np.testing.assert_array_equal(sharded.search(queries, 10)[1], want[:, :10])
    assert (set(resolved) >= {0, 1}) == (u > 0)  # u = 0 floats are exact: no second pass


def test_equal_scores_of_two_classes_are_paged_then_ranked_over_the_gallery(monkeypatch):
    m, rng = 45, np.random.default_rng(2)
    s, big, small = scaled_codes(m, rng)
    docs = random_planes(1000, 1, m, rng)
    tied = np.arange(3, 1000, 4)[:300]  # 0.5 s and 1.5 s, one cosine, floats an ulp apart
    docs[tied] = np.where((np.arange(len(tied)) % 2 == 1)[:, None, None], big, small)
    index = BinaryIndex(m, 1, block_size=128)
    index.add(docs)
    pages, run = [], index._run
    monkeypatch.setattr(index, "_run", lambda *a: pages.append(1) or run(*a))
    want = tied[:40].tolist()  # the K = 72 floats hold only 0.5 s: a page of 1.5 s follows
    assert index.search(s[None], 40)[1][0].tolist() == want and len(pages) == 2
    monkeypatch.setattr(band, "ROUNDS", 1)  # then too many pages: the whole gallery
    whole, real = [], index.exact_ints
    monkeypatch.setattr(
        index, "exact_ints", lambda w, d=None: whole.append(d is None) or real(w, d)
    )
    assert index.search(s[None], 40)[1][0].tolist() == want and whole.count(True) == 1


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_hamming_ties_go_to_the_lower_id_across_blocks(kernel):
    m = 40
    q = random_planes(1, 0, m)[0]
    docs = random_planes(300, 0, m)
    docs[[200, 60]] = q
    for i, bit in zip((250, 130, 7), (0, 1, 2), strict=True):  # distinct codes at distance 1
        docs[i] = q
        docs[i, 0, bit] *= -1
    index = BinaryIndex(m, 0, "hamming", kernel=kernel, block_size=128)
    index.add(docs)
    distances, ids = index.search(q[None], 5)
    assert ids[0].tolist() == [60, 200, 7, 130, 250] and distances[0].tolist() == [0, 0, 1, 1, 1]


def test_exact_order_corrects_float64_on_proportional_codes():
    # (3j, 9n) and (j, n) score alike; find a pair whose float64 quotients differ.
    j, n = next(
        (j, n)
        for j in range(1, 50)
        for n in range(1, 50)
        if 3 * j / np.sqrt(9 * n) < j / np.sqrt(n)
    )
    ip, norm = np.array([3 * j, j, -j, 10**6]), np.array([9 * n, n, n, 1])
    scores = topk.SdcScores(ip, norm)
    order = topk.exact_order(scores, np.array([0, 1, 2, 3]), np.array([0, 0, 0, 1]))
    assert order.tolist() == [0, 1, 2, 3]
    order = topk.exact_order(scores, np.array([9, 4, 0, 1]), np.zeros(4, np.int64))
    assert order.tolist() == [3, 1, 0, 2]


def test_hamming_equals_faiss():
    faiss = pytest.importorskip("faiss", reason="faiss-cpu is the benchmark anchor")
    docs = RNG.integers(0, 256, size=(3000, 8), dtype=np.uint8)
    docs[100:110] = docs[5]
    queries = RNG.integers(0, 256, size=(20, 8), dtype=np.uint8)

    def planes(x):
        return (1 - 2 * np.unpackbits(x, axis=1, bitorder="little").astype(np.int8))[:, None]

    ref = faiss.IndexBinaryFlat(64)
    ref.add(docs)
    want_d, want_i = ref.search(queries, 50)
    index = BinaryIndex(64, 0, "hamming", block_size=512)
    index.add(planes(docs))
    got_d, got_i = index.search(planes(queries), 50)
    np.testing.assert_array_equal(got_d, want_d)
    np.testing.assert_array_equal(got_i, want_i)


def test_sharded_search_equals_one_device():
    assert jax.device_count() == 8
    docs, queries = random_planes(5000, 1, 40), random_planes(12, 1, 40)
    docs[4999] = docs[3]
    one = BinaryIndex(40, 1, block_size=512)
    eight = BinaryIndex(40, 1, block_size=512, mesh=sharding.make_mesh(8))
    for index in (one, eight):
        index.add(docs)
    s1, i1 = one.search(queries, 30)
    s8, i8 = eight.search(queries, 30)
    np.testing.assert_array_equal(i1, i8)
    np.testing.assert_array_equal(s1, s8)


def test_float_index_is_exact_with_ties():
    x = RNG.standard_normal((700, 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[650] = x[20]
    q = np.concatenate([x[20:21], RNG.standard_normal((4, 6)).astype(np.float32)])
    index = FloatIndex(6, block_size=256)
    index.add(x)
    scores, ids = index.search(q, 10)
    full = q.astype(np.float64) @ x.T.astype(np.float64)
    order = np.lexsort((np.broadcast_to(np.arange(700), full.shape), -full), axis=1)[:, :10]
    np.testing.assert_array_equal(ids, order)
    assert ids[0, :2].tolist() == [20, 650]


def test_save_load_round_trip(tmp_path):
    docs, queries = random_planes(400, 1, 50), random_planes(5, 1, 50)
    index = BinaryIndex(50, 1)
    index.add(docs)
    assert index.bytes_per_doc == 2 * 2 * 4 + 4
    path = str(tmp_path / "gallery.bebr")
    index.save(path)
    index.save(path)  # replacing an existing index
    loaded = BinaryIndex.load(path)
    assert isinstance(loaded._words, np.memmap) and loaded.ntotal == 400
    for a, b in zip(index.search(queries, 7), loaded.search(queries, 7), strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery.bebr"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda ix: ix.add(random_planes(3, 1, 16)), r"shape \[N, 2, 12\]"),
        (lambda ix: ix.add(random_planes(3, 2, 12)), r"shape \[N, 2, 12\]"),
        (lambda ix: ix.add(random_planes(3, 1, 12).astype(np.int32)), "dtype int32"),
        (lambda ix: ix.add(np.zeros((3, 2, 12), np.int8)), "only -1 and \\+1"),
        (lambda ix: ix.search(random_planes(2, 1, 12), 1), "the index is empty"),
    ],
)
def test_bad_input_is_named(make, message):
    with pytest.raises(ValueError, match=message):
        make(BinaryIndex(12, 1))


def test_no_queries_and_a_file_in_the_way(tmp_path):
    index = BinaryIndex(12, 1)
    index.add(random_planes(5, 1, 12))
    scores, ids = index.search(random_planes(0, 1, 12), 3)
    assert scores.shape == ids.shape == (0, 3) and ids.dtype == np.int64
    (tmp_path / "file").write_text("kept")
    with pytest.raises(FileExistsError, match="is not a directory"):
        index.save(str(tmp_path / "file"))
    assert (tmp_path / "file").read_text() == "kept"
    assert sorted(os.listdir(tmp_path)) == ["file"]  # no staging directory left


def test_bad_k_and_bad_construction():
    index = BinaryIndex(12, 1)
    index.add(random_planes(5, 1, 12))
    with pytest.raises(ValueError, match=r"k=6 must be an integer in \[1, 5\]"):
        index.search(random_planes(1, 1, 12), 6)
    with pytest.raises(ValueError, match="k=0"):
        index.search(random_planes(1, 1, 12), 0)
    with pytest.raises(ValueError, match="needs u=0"):
        BinaryIndex(12, 1, "hamming")
    with pytest.raises(ValueError, match="u=4"):
        BinaryIndex(12, 4)
    with pytest.raises(ValueError, match="kernel='gpu'"):
        BinaryIndex(12, 1, kernel="gpu")


def test_truncated_and_foreign_files(tmp_path):
    index = BinaryIndex(12, 1)
    index.add(random_planes(50, 1, 12))
    path = tmp_path / "ix"
    index.save(str(path))
    with pytest.raises(IndexFormatError, match="no header.json"):
        BinaryIndex.load(str(tmp_path / "missing"))
    codes = path / "codes.npy"
    codes.write_bytes(codes.read_bytes()[:-100])
    with pytest.raises(IndexFormatError, match="codes.npy cannot be read"):
        BinaryIndex.load(str(path))
    np.save(codes, np.zeros((49, 2, 1), np.uint32))
    with pytest.raises(IndexFormatError, match="truncated"):
        BinaryIndex.load(str(path))
    np.save(codes, np.zeros((50, 2, 1), np.float32))
    with pytest.raises(IndexFormatError, match="dtype float32"):
        BinaryIndex.load(str(path))
    header = json.loads((path / "header.json").read_text())
    (path / "header.json").write_text(json.dumps({**header, "words_per_plane": 2}))
    with pytest.raises(IndexFormatError, match="words_per_plane=2 does not fit m=12"):
        BinaryIndex.load(str(path))
    (path / "header.json").write_text(json.dumps({**header, "u": 9}))
    with pytest.raises(IndexFormatError, match="u=9"):
        BinaryIndex.load(str(path))
    (path / "header.json").write_text('{"format": "faiss"}')
    with pytest.raises(IndexFormatError, match="not a bebrjax.BinaryIndex"):
        BinaryIndex.load(str(path))
    (path / "header.json").write_text("\x00garbage")
    with pytest.raises(IndexFormatError, match="not valid JSON"):
        BinaryIndex.load(str(path))


# --- codes of several versions in one index -------------------------------------------------

VERSIONS3 = {"a": 0, "b": 1, "c": 3}


def scaled_ints(planes, u_store):
    """2^u_store b as int64 [N, m] for codes of u <= u_store (exact)."""
    u = planes.shape[1] - 1
    return codes_lib.decode_int(planes).astype(np.int64) * 2 ** (u_store - u)


def tiled_block(words, tiles):
    """[N, P, W] words -> the kernels' P x [T, W, b] planes."""
    n, p, w = words.shape
    x = np.moveaxis(words.reshape(tiles, n // tiles, p, w), 1, -1)  # [T, P, W, b]
    return [jnp.asarray(x[:, j]) for j in range(p)]


def kernel_ip(kernel, q, planes, m, loops=None):
    """A kernel's 2^(u_q+U) <b_q, b_d> for query planes q: int32 [Q, T*b]."""
    if kernel == "popcount":
        got = scoring.popcount_ip(jnp.asarray(codes_lib.pack(q)), planes, m, loops)
    else:
        got = scoring.matmul_ip(jnp.asarray(codes_lib.decode_int(q)), planes, m, loops)
    assert got.dtype == jnp.int32
    return np.asarray(got).transpose(1, 0, 2).reshape(len(q), -1)


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_sdc_is_exact_across_u_and_per_document_loops_mask_missing_planes(kernel):
    m = 45  # not a multiple of 32: the padding bits must not count
    docs = {u: random_planes(200, u, m) for u in range(4)}
    mixed_u = RNG.integers(0, 4, 200)  # a block of U = 3 planes holding codes of every u
    words = np.zeros((200, 4, codes_lib.num_words(m)), np.uint32)
    for i, u in enumerate(mixed_u):  # a code of u < 3: zero words past its planes
        words[i, : u + 1] = codes_lib.pack(docs[u][i : i + 1])[0]
    mixed_ints = np.stack([scaled_ints(docs[u][i : i + 1], 3)[0] for i, u in enumerate(mixed_u)])
    loops = jnp.asarray(mixed_u.reshape(2, 100).astype(np.uint8))
    for u_q in range(4):
        q = random_planes(5, u_q, m)
        exact = codes_lib.decode_int(q).astype(np.int64)  # 2^u_q b_q
        for u_d in range(4):  # one u per block: constant plane weights
            got = kernel_ip(kernel, q, tiled_block(codes_lib.pack(docs[u_d]), 2), m)
            np.testing.assert_array_equal(got, exact @ scaled_ints(docs[u_d], u_d).T)
        got = kernel_ip(kernel, q, tiled_block(words, 2), m, loops)
        np.testing.assert_array_equal(got, exact @ mixed_ints.T)


def test_both_kernels_give_the_same_floats():
    m, tiles = 45, 2
    docs = random_planes(200, 3, m)
    loops = RNG.integers(0, 4, 200)
    words = codes_lib.pack(docs) * (np.arange(4) <= loops[:, None])[:, :, None].astype(np.uint32)
    block = {
        "planes": tiled_block(words, tiles),
        "scale": jnp.asarray(RNG.random((tiles, 100), np.float32)),
        "loops": jnp.asarray(loops.reshape(tiles, 100).astype(np.uint8)),
    }
    q = random_planes(5, 2, m)
    queries = {
        "words": jnp.asarray(codes_lib.pack(q)),
        "ints": jnp.asarray(codes_lib.decode_int(q)),
    }
    uniform = {**block, "planes": tiled_block(codes_lib.pack(docs), tiles)}
    del uniform["loops"]  # every document of u = 3: constant plane weights
    for one in (block, uniform):
        got = {k: scoring.code_scores(queries, one, m=m, metric="ip", kernel=k) for k in KERNELS}
        for kernel, scores in got.items():  # so the best groups may be scored again by popcount
            np.testing.assert_array_equal(scores, got["popcount"], err_msg=kernel)


def test_auto_measures_the_cpu_kernel_once_and_remembers_it(tmp_path, monkeypatch):
    monkeypatch.delenv("BEBRJAX_KERNEL")
    monkeypatch.setenv("BEBRJAX_KERNEL_CACHE", str(tmp_path / "kernels.json"))
    monkeypatch.setattr(kernels, "_CHOSEN", {})
    monkeypatch.setattr(kernels, "_CALIBRATION_DOCS", 4096)
    monkeypatch.setattr(kernels, "CPU_KERNELS", ("popcount", "csa"))  # two compile faster
    chosen = kernels.resolve("auto", 40, 2, "ip", BinaryIndex)
    assert chosen in kernels.CPU_KERNELS
    monkeypatch.setattr(kernels, "_CHOSEN", {})  # a new process: read back, not measured
    monkeypatch.setattr(kernels, "_fastest", lambda *shape: pytest.fail("measured again"))
    assert kernels.resolve("auto", 40, 2, "ip", BinaryIndex) == chosen
    assert list(json.loads((tmp_path / "kernels.json").read_text()).values()) == [chosen]
    monkeypatch.setenv("BEBRJAX_KERNEL", "swar")
    assert kernels.resolve("auto", 40, 2, "ip", BinaryIndex) == "swar"
    with pytest.raises(ValueError, match="kernel='fast': expected 'auto' or one of popcount"):
        BinaryIndex(40, 1, kernel="fast")


SCALED = [  # (id, version, plane signs): b = sum_i 2^-i sign_i s
    (5, "c", (1, 1, 1, 1)),
    (30, "b", (1, -1)),
    (120, "a", (1,)),
    (121, "b", (1, 1)),
    (280, "c", (1, -1, 1, -1)),
]


def mixed_gallery(n=300, m=37):
    """Codes of versions a (u=0), b (u=1), c (u=3) in random order, with exact ties.

    Doc 7 (version b) recurs at 40, 250 and 299. Docs 5, 30, 120, 121 and 280 are
    multiples of one sign vector s (1.875 s, 0.5 s, s, 1.5 s, 0.625 s of versions c, b,
    a, b, c): the same cosine with every query, in floats that may differ in the last bit.
    Returns the per-document planes (a list) and their version names.
    """
    names = RNG.choice(list(VERSIONS3), n)
    planes = [random_planes(1, VERSIONS3[v], m)[0] for v in names]
    names[7], planes[7] = "b", random_planes(1, 1, m)[0]
    for dup in (40, 250, 299):
        names[dup], planes[dup] = names[7], planes[7]
    s = random_planes(1, 0, m)[0, 0]
    for i, version, signs in SCALED:
        names[i], planes[i] = version, np.stack([sign * s for sign in signs])
    return planes, names


def build(planes, names, m, **kwargs):
    """An index with the docs added as version a, then replaced version by version."""
    index = BinaryIndex(m, VERSIONS3["a"], version="a", **kwargs)
    index.add(random_planes(len(planes), 0, m))
    for v in VERSIONS3:
        ids = np.flatnonzero(names == v)
        index.replace(ids, np.stack([planes[i] for i in ids]), v)
    return index


def mixed_brute_force(q, planes, k):
    """Exact top k of a mixed gallery: float64 scores and ids, ties to the lower id."""
    top = max(VERSIONS3.values())
    ints = np.stack([scaled_ints(p[None], top)[0] for p in planes])
    ids = exact_ranking(codes_lib.decode_int(q).astype(np.int64), ints, k)
    scores = codes_lib.decode(q).astype(np.float64) @ ints.T / np.linalg.norm(ints, axis=1)
    return np.take_along_axis(scores, ids, 1), ids


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_mixed_versions_search_equals_brute_force_including_ties(kernel):
    m = 37
    planes, names = mixed_gallery(m=m)
    index = build(planes, names, m, kernel=kernel, block_size=128, query_batch=16)
    assert index.versions == VERSIONS3 and index.u == 3
    assert index.counts() == {v: int((names == v).sum()) for v in VERSIONS3}
    np.testing.assert_array_equal(index.doc_versions, [list(VERSIONS3).index(v) for v in names])
    assert "loops" in index._host_arrays()
    for u_q in range(4):
        q = random_planes(9, u_q, m)
        if u_q <= 1:
            q[0] = planes[7] if u_q == 1 else planes[120]
        scores, ids = index.search(q, 20)
        want_scores, want_ids = mixed_brute_force(q, planes, 20)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
        assert (np.diff(scores, axis=1) <= 0).all()
        if u_q == 1:
            assert ids[0, :4].tolist() == [7, 40, 250, 299]
        if u_q == 0:
            assert ids[0, :5].tolist() == [i for i, _, _ in SCALED]
            assert len(set(scores[0, :5].tolist())) == 1
            np.testing.assert_array_equal(index.search(q, 3)[1], want_ids[:, :3])


def test_mixed_versions_sharded_equals_one_device_and_uniform_needs_no_loops():
    m = 37
    planes, names = mixed_gallery(m=m)
    q = random_planes(9, 1, m)
    q[0] = planes[121]  # 1.5 s: the tied multiples of s come first, in id order
    mesh = sharding.make_mesh(8)
    one = build(planes, names, m, block_size=128)
    eight = build(planes, names, m, block_size=128, mesh=mesh)
    got = eight.search(q, 20)
    for a, b in zip(one.search(q, 20), got, strict=True):
        np.testing.assert_array_equal(a, b)
    assert got[1][0, :5].tolist() == [i for i, _, _ in SCALED]
    # Once every document holds the widest version, the block is the one-version block.
    widest = random_planes(one.ntotal, 3, m)
    one.replace(np.arange(one.ntotal), widest, "c")
    assert "loops" not in one._host_arrays() and one.counts() == {"a": 0, "b": 0, "c": 300}
    uniform = BinaryIndex(m, 3, version="c", block_size=128)
    uniform.add(widest)
    for a, b in zip(one.search(q, 20), uniform.search(q, 20), strict=True):
        np.testing.assert_array_equal(a, b)


def test_wider_queries_meet_the_gallery_on_the_shared_prefix():
    docs, wide = random_planes(100, 1, 37), random_planes(6, 2, 64)
    index = BinaryIndex(37, 1, block_size=128)
    index.add(docs)
    for a, b in zip(index.search(wide, 10), index.search(wide[:, :, :37], 10), strict=True):
        np.testing.assert_array_equal(a, b)


def test_backfill_round_trip_and_version_1_directories(tmp_path):
    m, path = 37, str(tmp_path / "ix")
    old, new = random_planes(200, 1, m), random_planes(200, 2, m)
    q = random_planes(7, 2, m)
    index = BinaryIndex(m, 1, version="old")
    index.add(old)
    index.save(path)
    assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == [
        "codes.npy",
        "header.json",
        "inv_norms.npy",
    ]
    loaded = BinaryIndex.load(path)
    assert loaded._words.mode == "c" and loaded.versions == {"old": 1}
    before = (tmp_path / "ix" / "codes.npy").read_bytes()
    loaded.replace(np.arange(50), new[:50], "new")  # copy-on-write: the files stay
    assert (tmp_path / "ix" / "codes.npy").read_bytes() == before
    steps = [np.arange(150, 200), RNG.permutation(np.arange(0, 150))[:60]]
    for ids in steps:
        backfilled = backfill(path, ids, new[ids], "new")
        index.replace(ids, new[ids], "new")
    assert backfilled.versions == {"old": 1, "new": 2} and backfilled.u == 2
    assert BinaryIndex.load(path).counts() == {"old": 90, "new": 110}
    np.testing.assert_array_equal(BinaryIndex.load(path).doc_versions, index.doc_versions)
    assert (tmp_path / "ix" / "versions.npy").is_file()
    kept = np.setdiff1d(np.arange(200), np.concatenate(steps))[[0, 0, -1]]
    np.testing.assert_array_equal(backfilled.planes(steps[1]), new[steps[1]])
    np.testing.assert_array_equal(backfilled.planes(kept)[:, :2], old[kept])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]
    for a, b in zip(BinaryIndex.load(path).search(q, 15), index.search(q, 15), strict=True):
        np.testing.assert_array_equal(a, b)

    v1 = tmp_path / "v1"  # format version 1, written by hand
    v1.mkdir()
    np.save(v1 / "codes.npy", codes_lib.pack(old))
    np.save(v1 / "inv_norms.npy", codes_lib.inverse_norms(old))
    header = {"format": "bebrjax.BinaryIndex", "version": 1, "m": m, "u": 1, "metric": "ip"}
    (v1 / "header.json").write_text(json.dumps({**header, "count": 200, "words_per_plane": 2}))
    from_v1 = BinaryIndex.load(str(v1))
    assert from_v1.versions == {"default": 1} and from_v1.counts() == {"default": 200}
    reference = BinaryIndex(m, 1)
    reference.add(old)
    for a, b in zip(from_v1.search(q, 15), reference.search(q, 15), strict=True):
        np.testing.assert_array_equal(a, b)


def test_save_without_an_atomic_exchange(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_write, "_exchange", lambda a, b: False)
    index = BinaryIndex(20, 0)
    index.add(random_planes(10, 0, 20))
    for _ in range(2):
        index.save(str(tmp_path / "ix"))
    assert BinaryIndex.load(str(tmp_path / "ix")).ntotal == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]


def test_the_writer_records_its_version(tmp_path):
    planes = random_planes(10, 1, 20)
    writer = IndexWriter(str(tmp_path / "ix"), m=20, u=1, count=10, job={}, version="v2")
    writer.write(planes)
    writer.finish()
    index = BinaryIndex.load(str(tmp_path / "ix"))
    assert index.versions == {"v2": 1} and index.ntotal == 10


def snapshot(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.mark.parametrize("crash", ["np.save", "move_into_place", "second rename"])
def test_a_crash_during_backfill_leaves_the_previous_index(tmp_path, monkeypatch, crash):
    m, path = 20, tmp_path / "ix"
    index = BinaryIndex(m, 0, version="old")
    index.add(random_planes(60, 0, m))
    index.replace(np.arange(10), random_planes(10, 1, m), "mid")
    index.save(str(path))
    before, q = snapshot(path), random_planes(4, 1, m)
    want = index.search(q, 12)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    if crash == "np.save":
        real, calls = np.save, []

        def save_once(*args, **kwargs):  # the first file is written, then the crash
            calls.append(1)
            if len(calls) > 1:
                boom()
            real(*args, **kwargs)

        monkeypatch.setattr(np, "save", save_once)
    elif crash == "move_into_place":
        monkeypatch.setattr(storage, "move_into_place", boom)
    else:  # no atomic exchange: the old index is moved aside, then back
        real_replace = os.replace

        def replace(src, dst):
            if os.path.basename(src).startswith(".tmp-index-"):
                boom()
            real_replace(src, dst)

        monkeypatch.setattr(safe_write, "_exchange", lambda a, b: False)
        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        backfill(str(path), np.arange(20, 40), random_planes(20, 2, m), "new")
    monkeypatch.undo()
    assert snapshot(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]
    loaded = BinaryIndex.load(str(path))
    assert loaded.versions == {"old": 0, "mid": 1}
    np.testing.assert_array_equal(loaded.doc_versions, index.doc_versions)
    for a, b in zip(loaded.search(q, 12), want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_versions_and_replacements_are_named():
    index = BinaryIndex(12, 1, version="old")
    index.add(random_planes(10, 1, 12))
    new = random_planes(3, 2, 12)
    for ids, planes, version, message in [
        ([1, 2, 1], new, "new", r"ids must be unique; repeated: \[1\]"),
        ([1, 2, 10], new, "new", r"ids out of range \[0, 10\): \[10\]"),
        ([-1, 2, 3], new, "new", r"out of range \[0, 10\): \[-1\]"),
        ([1.0, 2.0, 3.0], new, "new", "1-D array of integers"),
        ([1, 2], new, "new", "planes hold 3 codes for 2 ids"),
        ([1, 2, 3], new[:, 0], "new", r"new version 'new' must have shape \[N, u\+1, 12\]"),
        ([1, 2, 3], new, "old", r"shape \[N, 2, 12\]"),
        ([1, 2, 3], random_planes(3, 4, 12), "new", "u=4 must be an integer in"),
    ]:
        with pytest.raises(ValueError, match=message):
            index.replace(ids, planes, version)
    assert index.versions == {"old": 1} and index.counts() == {"old": 10}
    with pytest.raises(ValueError, match="width m=11, narrower than the index's m=12"):
        index.search(random_planes(2, 1, 11), 3)
    with pytest.raises(ValueError, match=r"shape \[Q, u\+1, m\] with u in 0..3"):
        index.search(random_planes(2, 4, 12), 3)
    hamming = BinaryIndex(12, 0, "hamming")
    with pytest.raises(ValueError, match="'hamming' needs u=0 .* version 'wide' has u=1"):
        hamming.add(random_planes(3, 1, 12), "wide")
    hamming.add(random_planes(3, 0, 12))
    with pytest.raises(ValueError, match="'hamming' needs one-plane queries"):
        hamming.search(random_planes(2, 1, 12), 2)


def test_bad_version_files_are_named(tmp_path):
    index = BinaryIndex(12, 1, version="old")
    index.add(random_planes(50, 1, 12))
    index.replace(np.arange(5), random_planes(5, 0, 12), "tiny")
    path = tmp_path / "ix"
    index.save(str(path))
    header = json.loads((path / "header.json").read_text())
    assert header["version"] == 2
    assert header["versions"] == [{"name": "old", "u": 1}, {"name": "tiny", "u": 0}]
    good = (path / "versions.npy").read_bytes()
    for change, message in [
        (lambda: (path / "versions.npy").unlink(), "versions.npy cannot be read"),
        (lambda: np.save(path / "versions.npy", np.zeros(49, np.uint8)), "truncated"),
        (lambda: np.save(path / "versions.npy", np.full(50, 2, np.uint8)), "version index 2"),
        (lambda: np.save(path / "versions.npy", np.zeros(50, np.int32)), "dtype int32"),
    ]:
        change()
        with pytest.raises(IndexFormatError, match=message):
            BinaryIndex.load(str(path))
        (path / "versions.npy").write_bytes(good)
    for versions, message in [
        ([{"name": "old", "u": 1}, {"name": "old", "u": 0}], "version names repeat"),
        ([{"name": "old", "u": 1}, {"name": "x", "u": 5}], "bad version entry"),
        ([{"name": "old"}], "bad version entry"),
        ([{"name": "old", "u": 0}], "u=1 but the versions' largest u is 0"),
        ([], "a list of 1 to 256 entries"),
        ("old", "a list of 1 to 256 entries"),
    ]:
        (path / "header.json").write_text(json.dumps({**header, "versions": versions}))
        with pytest.raises(IndexFormatError, match=message):
            BinaryIndex.load(str(path))
    (path / "header.json").write_text(
        json.dumps({k: v for k, v in header.items() if k != "versions"})
    )
    with pytest.raises(IndexFormatError, match="header.json lacks versions"):
        BinaryIndex.load(str(path))


@pytest.mark.slow
def test_compiled_searches_are_bounded_and_a_dropped_one_comes_back(monkeypatch):
    from bebrjax.search import blocked, compiled

    assert blocked._SEARCH_FNS.max_entries == compiled.MAX_ENTRIES
    monkeypatch.setattr(blocked._SEARCH_FNS, "max_entries", 4)  # 4, not 32: fewer compiles
    docs, queries = random_planes(300, 1, 24), random_planes(5, 1, 24)
    index = BinaryIndex(24, 1, block_size=128)
    index.add(docs)
    first = index.search(queries, 1)
    for k in range(2, 4 + 6):  # a server asked for many k
        index.search(queries, k)
    assert len(blocked._SEARCH_FNS) == 4
    for got, want in zip(index.search(queries, 1), first, strict=True):  # k = 1 was dropped
        np.testing.assert_array_equal(got, want)


def test_rescoring_holds_one_block_of_vectors_and_equals_the_whole(monkeypatch, tmp_path):
    rng = np.random.default_rng(4)
    n, d, k, oversample, num = 500, 64, 5, 4, 600
    docs = rng.standard_normal((n, d)).astype(np.float32)
    queries = rng.standard_normal((num, d)).astype(np.float32)
    index = BinaryIndex(d, 0)
    index.add(np.where(docs > 0, 1, -1).astype(np.int8)[:, None])
    _, shortlist = index.search(np.where(queries > 0, 1, -1).astype(np.int8), k * oversample)

    class Shortlisted:  # the search done: only rescoring's own memory is traced
        codes = index

        def search(self, query_planes, width):
            return None, shortlist[:, :width]

    scores = np.einsum("qd,qkd->qk", queries.astype(np.float64), docs[shortlist].astype(np.float64))
    order = np.lexsort((shortlist, -scores))[:, :k]
    want = np.take_along_axis(shortlist, order, 1)
    whole_bytes = scores.size * d * 8
    monkeypatch.setattr(rescore_lib, "BLOCK_BYTES", whole_bytes // 64)  # blocks of 9 queries
    tracemalloc.start()
    try:
        got_scores, got = rescore_lib.rescore(Shortlisted(), shortlist, queries, k, docs=docs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < whole_bytes / 8, (peak, whole_bytes)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        got_scores, np.take_along_axis(scores, order, 1).astype(np.float32)
    )
    monkeypatch.setattr(rescore_lib, "BLOCK_BYTES", 1 << 26)  # one block: the same answer
    np.testing.assert_array_equal(
        rescore_lib.rescore(Shortlisted(), shortlist, queries, k, docs=docs)[1], want
    )
    # From a file, rows are read by offset, never through a memory map (whose pages, and
    # the kernel's neighbours of them, stay resident: 10 GB at 10M documents).
    path = str(tmp_path / "docs.npy")
    np.save(path, docs.astype(np.float16))
    monkeypatch.setattr(np, "memmap", None)
    got_scores, got = rescore_lib.rescore(Shortlisted(), shortlist, queries, k, docs=path)
    np.testing.assert_array_equal(
        got,
        rescore_lib.rescore(Shortlisted(), shortlist, queries, k, docs=docs.astype(np.float16))[1],
    )


def test_rows_are_taken_by_offset_in_runs_and_a_short_file_is_named(tmp_path):
    from bebrjax.data.rows import open_rows

    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    np.save(tmp_path / "x.npy", x)
    ids = np.array([0, 1, 2, 7, 9, 10, 19])
    source = open_rows(str(tmp_path / "x.npy"))
    np.testing.assert_array_equal(source.take(ids), x[ids])
    np.testing.assert_array_equal(source.read(3, 5), x[3:5])  # reading on after a take
    source.close()
    whole = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(whole[: len(whole) - 8])
    with pytest.raises(DataError, match="ends before row 19"):
        open_rows(str(tmp_path / "short.npy")).take(ids)


@pytest.mark.parametrize(
    "num_words",
    [31, pytest.param(61, marks=pytest.mark.slow), pytest.param(64, marks=pytest.mark.slow)],
)
def test_every_count_kernel_is_exact_past_30_words(num_words):
    """SWAR sums bytes over 30 words at a time (<= 240 each): wider codes take several folds.

    All-ones XORs (each doc the complement of a query) give every byte its
    largest count, where an overflowing accumulator would show.
    """
    rng = np.random.default_rng(num_words)
    q = rng.integers(0, 2**32, (3, num_words), dtype=np.uint32)
    d = rng.integers(0, 2**32, (2, num_words, 8), dtype=np.uint32)  # [T, W, b]
    d[0, :, 0], d[1, :, 3] = ~q[0], ~q[2]  # popcount 32 in every word
    d[1, :, 5] = q[1]  # and 0
    expected = np.bitwise_count(q[None, :, :, None] ^ d[:, None]).sum(2)  # [T, Q, b]
    assert expected.max() == 32 * num_words and expected.min() == 0
    for kernel, count in scoring.COUNTS.items():
        got = np.asarray(count(jnp.asarray(q), jnp.asarray(d)))
        np.testing.assert_array_equal(got, expected, err_msg=kernel)


def test_kernels_agree_with_popcount_on_codes_over_960_bits():
    m, tiles = 2001, 2  # 63 words per plane
    docs = random_planes(64, 1, m)
    docs[0] = -docs[1]  # the farthest code and the same code: extreme counts
    q = np.concatenate([random_planes(3, 1, m), docs[1:2]])
    block = {
        "planes": tiled_block(codes_lib.pack(docs), tiles),
        "scale": jnp.asarray(np.random.default_rng(1).random((tiles, 32), np.float32)),
    }
    queries = {
        "words": jnp.asarray(codes_lib.pack(q)),
        "ints": jnp.asarray(codes_lib.decode_int(q)),
    }
    got = {k: scoring.code_scores(queries, block, m=m, metric="ip", kernel=k) for k in KERNELS}
    for kernel, scores in got.items():
        np.testing.assert_array_equal(scores, got["popcount"], err_msg=kernel)
    exact = codes_lib.decode_int(q).astype(np.int64) @ codes_lib.decode_int(docs).astype(np.int64).T
    np.testing.assert_array_equal(kernel_ip("popcount", q, block["planes"], m), exact)
