"""BEBR's pair contrastive loss with hard negatives.

Logits l_jk = cos(z1_j, z2_k) / tau over a batch of positive pairs (z1_j, z2_j).
Off-diagonal entries of pairs that show the same item as pair j (`groups`,
e.g. the other captions of the same image) are masked, as in the reference,
which masks by image id; so, optionally, are those sharing row j's label.
Each row keeps its positive l_jj and its K largest allowed negatives, and
the cross entropy targets the positive. Both directions (z1 -> z2 and
z2 -> z1) are computed and summed.

A negative label or group means "none": such rows are never masked against
each other (many real data sets label only some items).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bebrjax.models.common import l2_normalize

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


def negatives_mask(
    n: int, labels: jax.Array | None = None, groups: jax.Array | None = None
) -> jax.Array:
    """[n, n] bool: off-diagonal, and sharing neither a (non-negative) label nor group."""
    allowed = ~jnp.eye(n, dtype=bool)
    for keys in (labels, groups):
        if keys is not None:
            allowed &= ~((keys[:, None] == keys[None, :]) & (keys[:, None] >= 0))
    return allowed


def pair_contrastive_loss(
    z1: jax.Array,
    z2: jax.Array,
    *,
    temperature: float = 0.05,
    hard_negatives: int = 5,
    labels: jax.Array | None = None,
    groups: jax.Array | None = None,
) -> jax.Array:
    """The symmetric hard-negative pair loss.

    Args:
      z1: [n, m] first members of the pairs (e.g. query codes).
      z2: [n, m] second members, row j pairing with z1[j].
      temperature: tau of the cosine logits.
      hard_negatives: K largest negatives kept per row; 0 keeps all.
      labels: optional [n] int labels; same-label off-diagonal entries are masked.
      groups: optional [n] int item ids; same-item off-diagonal entries are masked.

    Returns:
      The scalar loss, z1->z2 plus z2->z1.
    """
    logits = cosine_logits(z1, z2, temperature)
    allowed = negatives_mask(logits.shape[0], labels, groups)
    return hard_negative_cross_entropy(
        logits, allowed, hard_negatives
    ) + hard_negative_cross_entropy(logits.T, allowed.T, hard_negatives)


# The cross-version terms: (query side, doc side) of each direction.
CROSS_DIRECTIONS = ("new->old", "old->new")


def shared_prefix(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Both codes cut to their first min(m_a, m_b) coordinates (codes of unequal width)."""
    width = min(a.shape[-1], b.shape[-1])
    return a[..., :width], b[..., :width]


def cross_version_loss(
    new_query: jax.Array,
    new_doc: jax.Array,
    old_query: jax.Array,
    old_doc: jax.Array,
    *,
    directions: tuple[str, ...] = CROSS_DIRECTIONS,
    temperature: float = 0.05,
    hard_negatives: int = 5,
    mixed_negatives: bool = True,
    labels: jax.Array | None = None,
    groups: jax.Array | None = None,
) -> jax.Array:
    """The pair loss between a new binarizer's codes and a frozen old one's.

    "new->old" is `pair_contrastive_loss(new_query, old_doc)` (new query codes
    rank the old doc codes, and the old docs rank the new queries);
    "old->new" is `pair_contrastive_loss(old_query, new_doc)`. The old codes
    carry no gradient. Codes of unequal width are compared on their shared
    prefix: both are cut to the first min(m_new, m_old) coordinates, then
    L2-normalized by the cosine logits (a wider new code keeps its extra
    coordinates for new/new search only).

    With `mixed_negatives`, a query's row also holds, as negatives, the other
    docs' codes of the other version (new query j: cos(new_query_j,
    new_doc_k) for k != j beside cos(new_query_j, old_doc_k)): what a query
    meets in an index holding both versions, where the positive must beat
    both. Without it, nothing ties the scale of cross-version scores to
    same-version ones, and the documents of one version crowd out those of
    the other in a mixed gallery.

    Args:
      new_query: [n, m_new] new codes of the queries.
      new_doc: [n, m_new] new codes of their docs.
      old_query: [n, m_old] old codes of the same queries.
      old_doc: [n, m_old] old codes of the same docs.
      directions: which of `CROSS_DIRECTIONS` to sum.
      temperature: tau of the cosine logits.
      hard_negatives: K largest negatives kept per row; 0 keeps all.
      mixed_negatives: add the other version's docs to each row's negatives.
      labels: optional [n] labels masking same-label negatives.
      groups: optional [n] item ids masking same-item negatives of either
        version (the other docs of a query's item are no negatives), as in
        `pair_contrastive_loss`.

    Returns:
      The scalar sum over `directions`.
    """
    old_query, old_doc = jax.lax.stop_gradient(old_query), jax.lax.stop_gradient(old_doc)
    # direction -> (queries, docs of the other version, docs of the queries' own version)
    sides = {
        "new->old": (new_query, old_doc, new_doc),
        "old->new": (old_query, new_doc, old_doc),
    }
    allowed = negatives_mask(new_query.shape[0], labels, groups)
    total = jnp.zeros(())
    for direction in directions:
        query, doc, own = sides[direction]
        logits = cosine_logits(*shared_prefix(query, doc), temperature)
        negatives = jnp.where(allowed, logits, MASKED)
        if mixed_negatives:
            same = jnp.where(allowed, cosine_logits(query, own, temperature), MASKED)
            negatives = jnp.concatenate([negatives, same], axis=1)
        rows = positive_cross_entropy(jnp.diagonal(logits), negatives, hard_negatives)
        total = total + rows + hard_negative_cross_entropy(logits.T, allowed.T, hard_negatives)
    return total
