"""Units of the upgrade framework: splits, heads, compatibility losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bebrjax.data import DataError, classes, labelled
from bebrjax.data.upgrade_splits import KINDS, universal_split
from bebrjax.losses import compat
from bebrjax.models.heads import classifier_logits

RNG = np.random.default_rng(0)


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _log_softmax(a):
    a = a - a.max(axis=1, keepdims=True)
    return a - np.log(np.exp(a).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("kind", KINDS)
def test_split_accounting(kind):
    y = np.repeat(np.arange(20), 30)
    s = universal_split(y, kind, old_ratio=0.3, eval_fraction=0.2, seed=1)
    acc = s.accounting(y)
    assert acc["query"] == {"images": 60, "classes": 20}
    assert acc["gallery"] == {"images": 60, "classes": 20}
    pool = 600 - 120
    held = set(s.query) | set(s.gallery)
    assert not held & (set(s.old) | set(s.new))
    if kind.endswith("_class"):
        assert acc["old"]["classes"] == 6 and acc["old"]["images"] == 6 * 24
    else:
        assert acc["old"] == {"images": round(0.3 * 24) * 20, "classes": 20}
    if kind.startswith("extended"):
        assert acc["new"]["images"] == pool and set(s.old) <= set(s.new)
    else:
        assert acc["old_and_new"]["images"] == 0
        assert acc["old"]["images"] + acc["new"]["images"] == pool
    if kind == "open_class":
        assert acc["old_and_new"]["classes"] == 0 and acc["new"]["classes"] == 14
    np.testing.assert_array_equal(s.old, universal_split(y, kind, seed=1).old)


def test_split_errors():
    with pytest.raises(DataError, match="unknown"):
        universal_split(np.arange(10), "extended")
    with pytest.raises(DataError, match="old_ratio"):
        universal_split(np.arange(10), "open_data", old_ratio=1.0)


def test_labelled_validation(tmp_path):
    data = classes.get_data(num_classes=5, per_class=4, dim=3)
    assert data.x.shape == (20, 3) and data.num_classes == 5
    remapped = labelled.make_labelled(np.ones((3, 2)), np.array([7, 3, 7]))
    assert remapped.y.tolist() == [1, 0, 1]
    for x, y, message in [
        (np.ones((3, 2), np.int64), np.zeros(3, int), "floating point"),
        (np.ones((3, 4, 4, 1), np.float32), np.zeros(3, int), "uint8 NHWC"),
        (np.ones((3, 2)), np.zeros(3), "integers"),
        (np.ones((3, 2)), np.zeros(4, int), "expected \\[3\\]"),
        (np.full((3, 2), np.nan), np.zeros(3, int), "non-finite"),
        (np.ones(3), np.zeros(3, int), "images"),
    ]:
        path = tmp_path / "d.npz"
        np.savez(path, x=x, y=y)
        with pytest.raises(DataError, match=message):
            labelled.get_data(str(path))


def test_classifier_margins():
    w = RNG.standard_normal((4, 3)).astype(np.float32)
    e = _unit(RNG.standard_normal((2, 3))).astype(np.float32)
    y = np.array([1, 3])
    cos = _unit(e) @ _unit(w).T
    plain = classifier_logits(w, e, kind="cosine", scale=10.0)
    np.testing.assert_allclose(plain, 10 * cos, rtol=1e-5)
    cosface = np.asarray(classifier_logits(w, e, kind="cosface", scale=10.0, margin=0.2, labels=y))
    arcface = np.asarray(classifier_logits(w, e, kind="arcface", scale=10.0, margin=0.2, labels=y))
    for i, c in enumerate(y):
        np.testing.assert_allclose(cosface[i, c], 10 * (cos[i, c] - 0.2), rtol=1e-5)
        np.testing.assert_allclose(
            arcface[i, c], 10 * np.cos(np.arccos(cos[i, c]) + 0.2), rtol=1e-4
        )
    np.testing.assert_allclose(cosface[0, 0], 10 * cos[0, 0], rtol=1e-5)
    np.testing.assert_allclose(classifier_logits(w, e, kind="linear"), e @ w.T, rtol=1e-5)


def test_influence_loss_and_synthesized_classifier_match_numpy():
    old_w = RNG.standard_normal((5, 4)).astype(np.float32)
    seen = np.array([True, True, False, True, False])
    old_emb = RNG.standard_normal((12, 4)).astype(np.float32)
    labels = np.array([0, 1, 2, 2, 3, 0, 1, 2, 4, 4, 3, 1])
    synth = compat.synthesize_classifier(old_w, old_emb, labels, seen)
    np.testing.assert_array_equal(synth[seen], old_w[seen])
    norm = np.linalg.norm(old_w[seen], axis=1).mean()
    for c in (2, 4):
        mean = old_emb[labels == c].mean(0)
        np.testing.assert_allclose(synth[c], mean / np.linalg.norm(mean) * norm, rtol=1e-5)
    new = RNG.standard_normal((12, 6)).astype(np.float32)  # wider than the old 4: truncated
    got = compat.influence_loss(new, labels, synth, kind="cosine", scale=8.0)
    logits = 8.0 * _unit(new[:, :4]) @ _unit(synth).T
    want = -np.mean(_log_softmax(logits)[np.arange(12), labels])
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    grad = jax.grad(lambda w: compat.influence_loss(new, labels, w))(jnp.asarray(synth))
    np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("ract", [False, True])
@pytest.mark.parametrize("k", [0, 3])
def test_contrastive_and_ract_masks_and_top_k(ract, k):
    new = RNG.standard_normal((8, 5)).astype(np.float32)
    old = RNG.standard_normal((8, 3)).astype(np.float32)  # narrower: new is truncated
    labels = np.array([0, 1, 0, 2, 1, 3, 3, 0])
    got = compat.contrastive_loss(new, old, labels, temperature=0.1, hard_negatives=k, ract=ract)
    a, o = _unit(new[:, :3]).astype(np.float64), _unit(old).astype(np.float64)
    losses = []
    for i in range(8):
        other = labels != labels[i]
        negs = list((a[i] @ o[other].T) / 0.1)
        if ract:
            negs += list((a[i] @ a[other].T) / 0.1)
        if k:
            negs = sorted(negs, reverse=True)[:k]
        row = np.array([a[i] @ o[i] / 0.1, *negs])
        losses.append(np.log(np.exp(row - row.max()).sum()) + row.max() - row[0])
    np.testing.assert_allclose(float(got), np.mean(losses), rtol=1e-5)


def _numeric_grad(f, x, eps=1e-3):
    """Central differences of f at x, one coordinate at a time (float64)."""
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[idx] = eps
        grad[idx] = (f(x + step) - f(x - step)) / (2 * eps)
    return grad


@pytest.mark.parametrize("ract", [False, True])
def test_contrastive_gradient_reaches_new_through_every_use_and_old_not_at_all(ract):
    # RACT's new negatives carry gradient: jax.grad equals the finite differences of the
    # whole loss, which a stop-gradient on new_k would not. old is frozen by design.
    new = RNG.standard_normal((6, 4)).astype(np.float32)
    old = RNG.standard_normal((6, 4)).astype(np.float32)
    labels = np.array([0, 1, 0, 2, 1, 2])

    def loss(n, o):
        return compat.contrastive_loss(n, o, labels, temperature=0.5, ract=ract)

    grad_new, grad_old = jax.grad(loss, argnums=(0, 1))(jnp.asarray(new), jnp.asarray(old))
    want = _numeric_grad(lambda n: float(loss(jnp.asarray(n, jnp.float32), old)), new)
    np.testing.assert_allclose(grad_new, want, atol=2e-3)
    np.testing.assert_array_equal(grad_old, 0.0)
    assert np.abs(want).max() > 1e-2


def test_ract_gradient_is_the_same_on_one_and_eight_devices():
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from bebrjax.sharding import make_mesh

    new = RNG.standard_normal((16, 4)).astype(np.float32)
    old = RNG.standard_normal((16, 4)).astype(np.float32)
    labels = np.arange(16) % 5

    def grad(devices):
        mesh = make_mesh(devices)
        put = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))  # noqa: E731
        fn = jax.jit(jax.grad(lambda n, o, y: compat.contrastive_loss(n, o, y, ract=True)))
        return np.asarray(fn(put(new), put(old), put(labels)))

    np.testing.assert_allclose(grad(1), grad(8), rtol=1e-5, atol=1e-5)  # summation order


def test_prototype_refinement_matches_the_fixed_point():
    old = RNG.standard_normal((9, 3))
    new = _unit(RNG.standard_normal((9, 4)))
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 0])
    protos, present = compat.refine_prototypes(old, new, labels, 4, lam=0.9, temperature=0.5)
    assert present.tolist() == [True, True, True, False]
    for c in (0, 1):
        o, n = old[labels == c], new[labels == c]
        e = n @ n.T / 0.5
        np.fill_diagonal(e, -np.inf)
        p = np.exp(e) / np.exp(e).sum(1, keepdims=True)
        v = o.copy()
        for _ in range(2000):  # iterate V <- lam P V + (1 - lam) O to its fixed point
            v = 0.9 * p @ v + 0.1 * o
        np.testing.assert_allclose(protos[c], v.mean(0), rtol=1e-4, atol=1e-6)
        assert not np.allclose(protos[c], o.mean(0), atol=1e-3)  # the row version refines
    np.testing.assert_allclose(protos[2], old[7], rtol=1e-6)
    column, _ = compat.refine_prototypes(old, new, labels, 4, temperature=0.5, normalize="column")
    for c in (0, 1, 2):  # a column softmax is a silent no-op: exactly the class mean
        np.testing.assert_allclose(column[c], old[labels == c].mean(0), rtol=1e-5, atol=1e-6)


def test_l2_loss_and_width_fitting():
    new = jnp.ones((2, 3))
    old = jnp.zeros((2, 5))
    assert compat.fit_width(new, 5).shape == (2, 5)
    assert float(compat.l2_loss(new, old)) == pytest.approx(3.0)
