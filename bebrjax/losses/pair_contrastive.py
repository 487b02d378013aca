"""BEBR's pair contrastive loss with hard negatives (DESIGN.md §4).

Logits l_jk = cos(z1_j, z2_k) / tau over a batch of positive pairs (z1_j, z2_j).
Off-diagonal entries whose label equals row j's label are masked (other views
of the same item). Each row keeps its positive l_jj and its K largest allowed
negatives, and the cross entropy targets the positive. Both directions
(z1 -> z2 and z2 -> z1) are computed and summed.

A negative label means "no label": such rows are never masked against each
other (many real data sets label only some items).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bebrjax.models.binarizer import l2_normalize

# A finite stand-in for -inf: exp() of it is exactly 0 and its gradient is clean.
MASKED = -1e9


def cosine_logits(a: jax.Array, b: jax.Array, temperature: float) -> jax.Array:
    """cos(a_i, b_j) / temperature for every pair of rows, [len(a), len(b)]."""
    return l2_normalize(a) @ l2_normalize(b).T / temperature


def positive_cross_entropy(
    positives: jax.Array,
    negatives: jax.Array,
    hard_negatives: int,
    weights: jax.Array | None = None,
) -> jax.Array:
    """Mean cross entropy of each row's positive logit against its negative logits.

    Args:
      positives: [n] the positive logit of each row.
      negatives: [n, M] negative logits; `MASKED` entries are excluded.
      hard_negatives: K; each row keeps its K largest negatives (0 keeps all).
      weights: optional [n] per-row weights of the mean.

    Returns:
      A scalar: the (weighted) mean over rows of logsumexp([pos, negatives]) - pos.
    """
    if 0 < hard_negatives < negatives.shape[1]:
        negatives, _ = jax.lax.top_k(negatives, hard_negatives)
    row = jnp.concatenate([positives[:, None], negatives], axis=1)
    return weighted_mean(jax.nn.logsumexp(row, axis=1) - positives, weights)


def weighted_mean(values: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """mean(weights * values), or the plain mean without weights (weights carry no gradient)."""
    if weights is None:
        return jnp.mean(values)
    return jnp.mean(jax.lax.stop_gradient(weights) * values)


def hard_negative_cross_entropy(
    logits: jax.Array, negatives: jax.Array, hard_negatives: int
) -> jax.Array:
    """`positive_cross_entropy` with the positives on the diagonal of [n, n] logits.

    Args:
      logits: [n, n] logits; the diagonal holds the positives.
      negatives: [n, n] bool, True where an entry may serve as a negative.
      hard_negatives: K; each row keeps its K largest negatives (0 keeps all).
    """
    return positive_cross_entropy(
        jnp.diagonal(logits), jnp.where(negatives, logits, MASKED), hard_negatives
    )


def negatives_mask(n: int, labels: jax.Array | None = None) -> jax.Array:
    """[n, n] bool: off-diagonal, and not sharing a (non-negative) label."""
    allowed = ~jnp.eye(n, dtype=bool)
    if labels is not None:
        same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
        allowed &= ~same
    return allowed


def pair_contrastive_loss(
    z1: jax.Array,
    z2: jax.Array,
    *,
    temperature: float = 0.05,
    hard_negatives: int = 5,
    labels: jax.Array | None = None,
) -> jax.Array:
    """The symmetric hard-negative pair loss.

    Args:
      z1: [n, m] first members of the pairs (e.g. query codes).
      z2: [n, m] second members, row j pairing with z1[j].
      temperature: tau of the cosine logits.
      hard_negatives: K largest negatives kept per row; 0 keeps all.
      labels: optional [n] int labels; same-label off-diagonal entries are masked.

    Returns:
      The scalar loss, z1->z2 plus z2->z1.
    """
    logits = cosine_logits(z1, z2, temperature)
    allowed = negatives_mask(logits.shape[0], labels)
    return hard_negative_cross_entropy(
        logits, allowed, hard_negatives
    ) + hard_negative_cross_entropy(logits.T, allowed.T, hard_negatives)
