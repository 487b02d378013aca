import jax
import numpy as np
import pytest

from bebrjax.losses.pair_contrastive import pair_contrastive_loss
from bebrjax.losses.similarity_distill import similarity_distillation_loss


def _normalize(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _log_softmax(a):
    a = a - a.max(axis=1, keepdims=True)
    return a - np.log(np.exp(a).sum(axis=1, keepdims=True))


def _one_direction(logits, labels, k):
    losses = []
    for j in range(len(logits)):
        negs = [
            logits[j, c]
            for c in range(len(logits))
            if c != j and (labels is None or labels[c] != labels[j] or labels[j] < 0)
        ]
        if k:
            negs = sorted(negs, reverse=True)[:k]
        row = np.array([logits[j, j], *negs])
        losses.append(np.log(np.exp(row - row.max()).sum()) + row.max() - logits[j, j])
    return np.mean(losses)


def _pair_reference(z1, z2, tau, k, labels):
    logits = _normalize(z1) @ _normalize(z2).T / tau
    return _one_direction(logits, labels, k) + _one_direction(logits.T, labels, k)


@pytest.mark.parametrize("k", [0, 2, 5])
@pytest.mark.parametrize("with_labels", [False, True])
def test_pair_contrastive_matches_numpy(k, with_labels):
    rng = np.random.default_rng(0)
    z1, z2 = rng.standard_normal((2, 10, 6)).astype(np.float32)
    labels = np.array([0, 1, 0, 2, -1, -1, 3, 1, 0, 4]) if with_labels else None
    got = pair_contrastive_loss(z1, z2, temperature=0.1, hard_negatives=k, labels=labels)
    want = _pair_reference(z1.astype(np.float64), z2.astype(np.float64), 0.1, k, labels)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


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
