import jax
import numpy as np
import pytest

from bebrjax.losses.pair_contrastive import (
    cross_version_loss,
    pair_contrastive_loss,
    shared_prefix,
)
from bebrjax.losses.similarity_distill import similarity_distillation_loss


def _normalize(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _log_softmax(a):
    a = a - a.max(axis=1, keepdims=True)
    return a - np.log(np.exp(a).sum(axis=1, keepdims=True))


def _shares(keys, j, c):
    return keys is not None and keys[c] == keys[j] and keys[j] >= 0


def _one_direction(logits, labels, k, groups=None):
    losses = []
    for j in range(len(logits)):
        negs = [
            logits[j, c]
            for c in range(len(logits))
            if c != j and not _shares(labels, j, c) and not _shares(groups, j, c)
        ]
        if k:
            negs = sorted(negs, reverse=True)[:k]
        row = np.array([logits[j, j], *negs])
        losses.append(np.log(np.exp(row - row.max()).sum()) + row.max() - logits[j, j])
    return np.mean(losses)


def _pair_reference(z1, z2, tau, k, labels, groups=None):
    logits = _normalize(z1) @ _normalize(z2).T / tau
    return _one_direction(logits, labels, k, groups) + _one_direction(logits.T, labels, k, groups)


@pytest.mark.parametrize("k", [0, 2, 5])
@pytest.mark.parametrize("with_labels", [False, True])
def test_pair_contrastive_matches_numpy(k, with_labels):
    rng = np.random.default_rng(0)
    z1, z2 = rng.standard_normal((2, 10, 6)).astype(np.float32)
    labels = np.array([0, 1, 0, 2, -1, -1, 3, 1, 0, 4]) if with_labels else None
    got = pair_contrastive_loss(z1, z2, temperature=0.1, hard_negatives=k, labels=labels)
    want = _pair_reference(z1.astype(np.float64), z2.astype(np.float64), 0.1, k, labels)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_docs_of_the_same_item_are_no_negatives():
    rng = np.random.default_rng(3)
    z1, z2 = rng.standard_normal((2, 10, 6)).astype(np.float32)
    groups = np.array([0, 0, 0, 1, 1, -1, -1, 2, 3, 4])  # pairs 0-2 show one item, 3-4 another
    z2[1] = z2[2] = 3 * z1[0]  # unmasked, item 0's other docs are query 0's hardest negatives
    kwargs = dict(temperature=0.1, hard_negatives=2)
    got = float(pair_contrastive_loss(z1, z2, groups=groups, **kwargs))
    want = _pair_reference(z1.astype(np.float64), z2.astype(np.float64), 0.1, 2, None, groups)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got < float(pair_contrastive_loss(z1, z2, **kwargs)) - 1.0
    topics = np.array([4, 5, 4, -1, 5, 4, -1, 5, 6, 6])  # labels mask as well, independently
    both = pair_contrastive_loss(z1, z2, labels=topics, groups=groups, **kwargs)
    want = _pair_reference(z1.astype(np.float64), z2.astype(np.float64), 0.1, 2, topics, groups)
    np.testing.assert_allclose(float(both), want, rtol=1e-5)


def _mixed_rows(query, doc, own, tau, k, groups=None):
    """Query j: positive doc j of the other version; negatives doc k and own-version doc k != j.

    Docs of query j's item (`groups`) are no negatives, of either version.
    """
    width = min(query.shape[1], doc.shape[1])
    cross = _normalize(query[:, :width]) @ _normalize(doc[:, :width]).T / tau
    same = _normalize(query) @ _normalize(own).T / tau
    losses = []
    for j in range(len(query)):
        others = [c for c in range(len(query)) if c != j and not _shares(groups, j, c)]
        negs = [cross[j, c] for c in others] + [same[j, c] for c in others]
        row = np.array([cross[j, j], *sorted(negs, reverse=True)[:k]])
        losses.append(np.log(np.exp(row - row.max()).sum()) + row.max() - cross[j, j])
    return np.mean(losses) + _one_direction(cross.T, None, k, groups)


@pytest.mark.parametrize("directions", [("new->old",), ("new->old", "old->new")])
@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("grouped", [False, True])
def test_cross_version_loss_matches_numpy_on_the_shared_prefix(directions, mixed, grouped):
    rng = np.random.default_rng(2)
    new_q, new_d = rng.standard_normal((2, 10, 8))  # new codes are wider
    old_q, old_d = rng.standard_normal((2, 10, 5))
    groups = np.array([0, 0, 0, 1, 1, -1, -1, 2, 3, 4]) if grouped else None
    if grouped:  # unmasked, item 0's other docs would be query 0's hardest negatives
        new_d[1] = new_d[2] = 3 * new_q[0]
        old_d[1] = old_d[2] = 3 * new_q[0, :5]
    codes = [x.astype(np.float32) for x in (new_q, new_d, old_q, old_d)]
    kwargs = dict(directions=directions, temperature=0.1, hard_negatives=3, mixed_negatives=mixed)
    got = cross_version_loss(*codes, groups=groups, **kwargs)
    sides = {"new->old": (new_q, old_d, new_d), "old->new": (old_q, new_d, old_d)}
    if mixed:
        want = sum(_mixed_rows(*sides[d], 0.1, 3, groups) for d in directions)
    else:
        want = sum(
            _pair_reference(*shared_prefix(*sides[d][:2]), 0.1, 3, None, groups) for d in directions
        )
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    grads = jax.grad(lambda o: cross_version_loss(*codes[:2], o, codes[3], **kwargs))(codes[2])
    assert not np.any(np.asarray(grads))  # the old codes are frozen


def test_distillation_matches_numpy_and_vanishes_for_a_perfect_student():
    rng = np.random.default_rng(1)
    teacher = rng.standard_normal((12, 8)).astype(np.float32)
    student = rng.standard_normal((12, 5)).astype(np.float32)

    def logits(a, tau):
        out = _normalize(a.astype(np.float64)) @ _normalize(a.astype(np.float64)).T / tau
        np.fill_diagonal(out, -np.inf)
        return out

    log_p = _log_softmax(logits(teacher, 0.07))
    log_q = _log_softmax(logits(student, 0.2))
    np.fill_diagonal(log_p, 0.0)
    np.fill_diagonal(log_q, 0.0)
    want = np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1))
    got = similarity_distillation_loss(
        student, teacher, teacher_temperature=0.07, student_temperature=0.2
    )
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    same = similarity_distillation_loss(
        teacher, teacher, teacher_temperature=0.1, student_temperature=0.1
    )
    assert abs(float(same)) < 1e-6


def test_distillation_gives_no_gradient_to_the_teacher():
    rng = np.random.default_rng(2)
    teacher = rng.standard_normal((6, 4)).astype(np.float32)
    student = rng.standard_normal((6, 4)).astype(np.float32)
    grad = jax.grad(lambda t: similarity_distillation_loss(student, t))(teacher)
    np.testing.assert_array_equal(grad, 0.0)
