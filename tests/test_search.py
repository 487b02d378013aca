import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bebrjax import sharding
from bebrjax.search import BinaryIndex, FloatIndex, IndexFormatError, scoring
from bebrjax.search import codes as codes_lib

RNG = np.random.default_rng(0)


def random_planes(n, u, m, rng=RNG):
    return rng.choice(np.array([-1, 1], np.int8), size=(n, u + 1, m))


def brute_force(query_planes, doc_planes, k, metric):
    """Exact top-k by numpy: scores, and ids with ties to the lower id."""
    q = codes_lib.decode(query_planes).astype(np.float64)
    d = codes_lib.decode(doc_planes).astype(np.float64)
    ids = np.broadcast_to(np.arange(len(d)), (len(q), len(d)))
    if metric == "hamming":
        dist = (d.shape[1] - q @ d.T) / 2
        order = np.lexsort((ids, dist), axis=1)[:, :k]
        return np.take_along_axis(dist, order, 1), order
    score = (q @ d.T) / np.linalg.norm(d, axis=1)
    order = np.lexsort((ids, -score), axis=1)[:, :k]
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


@pytest.mark.parametrize("u", [0, 1, 2, 3])
@pytest.mark.parametrize("kernel", ["popcount", "matmul"])
def test_sdc_equals_the_decoded_inner_product_exactly(u, kernel):
    m = 45  # not a multiple of 32: the padding bits must not count
    q, d = random_planes(9, u, m), random_planes(300, u, m)
    tiles = d.reshape(3, 100, u + 1, m)  # T=3 tiles of b=100 docs
    block = [np.moveaxis(codes_lib.pack(t), 0, -1) for t in tiles]  # [P, W, b] per tile
    planes = [jnp.asarray(np.stack([tile[p] for tile in block])) for p in range(u + 1)]
    words, ints = jnp.asarray(codes_lib.pack(q)), jnp.asarray(codes_lib.decode_int(q))
    ip4 = (
        scoring.popcount_ip(words, planes, m)
        if kernel == "popcount"
        else scoring.matmul_ip(ints, planes, m)
    )
    want = codes_lib.decode(q).astype(np.float64) @ codes_lib.decode(d).astype(np.float64).T
    got = np.asarray(ip4).transpose(1, 0, 2).reshape(9, 300)
    np.testing.assert_array_equal(got, want * 4**u)
    assert got.dtype == np.int32


@pytest.mark.parametrize(
    "m, u, metric", [(37, 0, "hamming"), (64, 0, "ip"), (70, 1, "ip"), (33, 2, "ip"), (50, 3, "ip")]
)
@pytest.mark.parametrize("kernel", ["popcount", "matmul"])
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
