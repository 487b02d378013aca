import tracemalloc

import numpy as np
import pytest

from bebrjax.data import DataError, labelled, npz, synthetic
from bebrjax.data.batching import batch_indices
from bebrjax.data.pairs import NormalizedRows, grouping_conflict
from bebrjax.data.splits import train_eval_split
from bebrjax.data.upgrade_splits import universal_split
from bebrjax.evaluators import retrieval
from bebrjax.evaluators.retrieval import float_recall, recall_at_k


def test_synthetic_is_deterministic_normalized_and_nontrivial():
    a = synthetic.get_data(num_pairs=2000, seed=3)
    b = synthetic.get_data(num_pairs=2000, seed=3)
    np.testing.assert_array_equal(a.query, b.query)
    np.testing.assert_allclose(np.linalg.norm(a.doc, axis=1), 1.0, rtol=1e-5)
    r10 = float_recall(a.query, a.doc, [10])["R@10"]
    assert 0.3 < r10 < 0.95
    assert not np.array_equal(a.query, synthetic.get_data(num_pairs=2000, seed=4).query)


def _save(tmp_path, **arrays):
    path = tmp_path / "pairs.npz"
    np.savez(path, **arrays)
    return str(path)


def test_npz_and_npy_directory_load_the_same(tmp_path):
    rng = np.random.default_rng(0)
    q, d = rng.standard_normal((2, 30, 8)).astype(np.float16)
    labels = np.arange(30) % 3
    a = npz.get_data(_save(tmp_path, q=q, d=d, y=labels), "q", "d", "y")
    folder = tmp_path / "dir"
    folder.mkdir()
    for key, arr in {"query": q, "doc": d}.items():
        np.save(folder / f"{key}.npy", arr)
    b = npz.get_data(str(folder))
    np.testing.assert_array_equal(a.query, b.query)
    assert a.labels.tolist() == labels.tolist() and b.labels is None
    assert a.query.dtype == np.float32
    # From .npy files the rows stay on disk and are read, normalized, when used:
    # a subset's batch reads equal the in-memory arrays'.
    assert isinstance(b.doc, NormalizedRows)
    rows = rng.permutation(30)[:12]
    part_a, part_b = a.subset(rows), b.subset(rows)
    assert isinstance(part_b.doc, NormalizedRows) and part_b.doc.shape == (12, 8)
    np.testing.assert_array_equal(part_a.doc[[4, 0, 7]], part_b.doc[[4, 0, 7]])
    np.testing.assert_array_equal(part_a.doc[2:9], part_b.doc[2:9])
    np.testing.assert_array_equal(part_a.doc, np.asarray(part_b.doc))


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"query": np.ones((4, 3)), "docs": np.ones((4, 3))}, "no array 'doc'"),
        ({"query": np.ones((4, 3)), "doc": np.ones((5, 3))}, "must have the same shape"),
        ({"query": np.ones((4, 3)), "doc": np.full((4, 3), np.nan)}, "non-finite"),
        ({"query": np.ones((4, 3), np.int64), "doc": np.ones((4, 3))}, "dtype int64"),
        ({"query": np.ones((0, 3)), "doc": np.ones((0, 3))}, "is empty"),
        ({"query": np.ones(4), "doc": np.ones(4)}, "must be 2-D"),
        ({"query": np.zeros((4, 3)), "doc": np.ones((4, 3))}, "all zeros"),
        (
            {"query": np.ones((4, 3)), "doc": np.ones((4, 3)), "labels": np.ones(3, int)},
            "'labels' has shape",
        ),
    ],
)
def test_npz_bad_input_names_the_file_and_problem(tmp_path, arrays, message):
    path = _save(tmp_path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        npz.get_data(path)
    assert path in str(info.value)


def test_missing_foreign_and_single_npy_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        npz.get_data(str(tmp_path / "nope.npz"))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="not a readable .npz"):
        npz.get_data(str(junk))
    np.save(tmp_path / "one.npy", np.ones((3, 2)))
    with pytest.raises(DataError, match="holds one array"):
        npz.get_data(str(tmp_path / "one.npy"))


def test_splits_are_seeded_disjoint_and_validated(tmp_path):
    train, held = train_eval_split(100, eval_fraction=0.2, seed=1)
    assert len(held) == 20 and not set(train) & set(held) and len(train) + len(held) == 100
    np.testing.assert_array_equal(held, train_eval_split(100, eval_fraction=0.2, seed=1)[1])
    np.save(tmp_path / "idx.npy", np.array([5, 1, 7]))
    assert train_eval_split(10, eval_indices=str(tmp_path / "idx.npy"))[1].tolist() == [1, 5, 7]
    for kwargs, message in [
        ({"eval_fraction": 1.5}, "in \\(0, 1\\)"),
        ({"eval_indices": np.array([1, 1])}, "duplicates"),
        ({"eval_indices": np.array([10])}, "must lie in"),
        ({"eval_indices": np.arange(10)}, "leaves 0 to train"),
    ]:
        with pytest.raises(DataError, match=message):
            train_eval_split(10, **kwargs)


def test_sibling_pairs_split_by_item_and_every_doc_of_the_item_is_relevant(tmp_path):
    data = synthetic.get_data(num_pairs=203, dim=8, latent_dim=3, num_clusters=4, siblings=5)
    assert data.groups.tolist() == (np.arange(203) // 5).tolist()
    np.testing.assert_array_equal(data.query[5], data.query[9])  # one query, five docs
    train, held = train_eval_split(len(data), eval_fraction=0.3, seed=2, groups=data.groups)
    assert not set(data.groups[train]) & set(data.groups[held])
    assert len(set(data.groups[held])) == round(0.3 * 41)
    with pytest.raises(DataError, match="rows 5, 6, 7, 8, 9 show one item"):
        train_eval_split(len(data), eval_indices=np.array([0, 1, 2, 3, 4, 7]), groups=data.groups)

    part = data.subset(held)
    items = part.item_ids()
    scores = part.query @ part.doc.T
    hits = {1: 0, 5: 0}
    for i, row in enumerate(scores):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        first = next(r for r, j in enumerate(order) if items[j] == items[i])
        hits = {k: n + (first < k) for k, n in hits.items()}
    want = {f"R@{k}": n / len(part) for k, n in hits.items()}
    assert float_recall(part.query, part.doc, [1, 5], items=items) == want
    assert want["R@1"] > float_recall(part.query, part.doc, [1, 5])["R@1"]  # doc i alone

    path = _save(tmp_path, query=data.query[:5], doc=data.doc[:5], groups=[9, -1, 9, -4, 2])
    loaded = npz.get_data(path).item_ids()
    assert loaded[0] == loaded[2] and len(set(loaded.tolist())) == 4
    assert npz.get_data(path, groups_key="").item_ids().tolist() == list(range(5))


def test_labelled_data_that_cannot_be_evaluated_is_refused(tmp_path):
    path = tmp_path / "one.npz"
    np.savez(path, x=np.ones((6, 2), np.float32), y=np.full(6, 4))
    with pytest.raises(DataError, match=f"{path}: labels 'y' hold one class \\(4\\)"):
        labelled.get_data(str(path))
    # Two classes, but only one with the 3 items that put it in the held-out split.
    y = np.array([0] * 10 + [1] * 2)
    with pytest.raises(DataError, match="1 of the 2 classes has 3 or more items"):
        universal_split(y, "extended_data")
    y = np.array([0] * 10 + [1] * 3)
    assert universal_split(y, "extended_data").accounting(y)["gallery"]["classes"] == 2


def test_batches_depend_only_on_seed_and_step():
    first = [batch_indices(50, 16, s, seed=0) for s in range(6)]
    np.testing.assert_array_equal(first[4], batch_indices(50, 16, 4, seed=0))
    epoch = np.concatenate(first[:3])
    assert len(set(epoch.tolist())) == 48
    assert not np.array_equal(first[0], first[3])
    assert not np.array_equal(first[0], batch_indices(50, 16, 0, seed=1))
    for n, size in [(1, 1), (2, 1), (64, 16), (1000, 250)]:  # an epoch visits every row once
        rows = np.concatenate([batch_indices(n, size, s, seed=3) for s in range(n // size)])
        assert sorted(rows.tolist()) == list(range(n))


def test_a_batch_is_drawn_without_touching_every_row():
    tracemalloc.start()
    try:
        rows = batch_indices(10_000_000, 512, 123_456, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200_000  # a permutation of the 10M rows is 80 MB
    assert len(set(rows.tolist())) == 512 and 0 <= rows.min() and rows.max() < 10_000_000


def test_recall_counts_the_positive_within_k_with_ties_to_the_lower_id():
    q = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    d = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    # query 0: doc 0 ties doc 1 and is lower -> rank 0; query 1: its doc 1 ties doc 0,
    # which is lower -> rank 1; query 2: doc 2 (cos 0.71) beats docs 0, 1 (cos 0) -> rank 0.
    assert float_recall(q, d, [1, 2]) == {"R@1": 2 / 3, "R@2": 1.0}
    assert recall_at_k(np.array([[0, 5], [7, 1], [3, 4]]), [1, 2]) == {"R@1": 1 / 3, "R@2": 2 / 3}


def test_hash_recall_matches_brute_force_hamming():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((90, 12)).astype(np.float32)
    q, d = (
        retrieval.random_hash(x + 0.5 * rng.standard_normal(x.shape), 24, 0),
        retrieval.random_hash(x, 24, 0),
    )
    dist = (q[:, 0, None, :] != d[None, :, 0, :]).sum(-1)
    ahead = (dist < np.diag(dist)[:, None]) | (
        (dist == np.diag(dist)[:, None]) & (np.arange(90) < np.arange(90)[:, None])
    )
    ranks = ahead.sum(1)
    want = {f"R@{k}": float(np.mean(ranks < k)) for k in (1, 5)}
    assert retrieval.code_recall(q, d, [1, 5], metric="hamming") == want


def test_two_groupings_conflict_only_when_they_group_the_rows_differently():
    items = np.array([0, 0, 1, 1, 2])
    assert grouping_conflict(items, np.array([7, 7, 3, 3, -1])) is None  # other ids, alike
    assert grouping_conflict(items, np.array([0, 0, 0, 1, 2])) == (2, 3)
    assert grouping_conflict(items, np.array([0, 0, 1, 1, 1])) == (2, 4)
