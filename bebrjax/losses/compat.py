"""Compatibility losses: train a new embedding model against a frozen old one.

Every function is pure; `old_*` arguments are frozen (no gradient reaches them).
When the new embedding is wider or narrower than the old one it is fitted to
the old width first (`fit_width`: truncated, or zero-padded).

  * `l2_loss`: ||phi_new(x) - phi_old(x)||^2.
  * `influence_loss` (BCT): cross entropy of the new embedding under the
    frozen old classifier; `synthesize_classifier` gives classes the old model
    never saw a row each, the mean old embedding of that class (never the
    untrained row).
  * `contrastive_loss` (and RACT, Hot-Refresh): the anchor phi_new(x_i), its
    positive phi_old(x_i), negatives phi_old(x_k) (and, for RACT, phi_new(x_k))
    of other classes, optionally only the K hardest. Negatives carry no
    gradient: under data parallelism they are gathered copies; treating them
    so in every case makes the loss the same on any number of devices.
  * `refine_prototypes` (UniBCT): structural prototype refinement, in closed form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bebrjax.losses.pair_contrastive import MASKED, positive_cross_entropy
from bebrjax.models.binarizer import l2_normalize
from bebrjax.models.heads import classifier_logits


def fit_width(embeddings: jax.Array, width: int) -> jax.Array:
    """Truncates or zero-pads the last axis to `width`."""
    d = embeddings.shape[-1]
    if d >= width:
        return embeddings[..., :width]
    return jnp.pad(embeddings, [(0, 0)] * (embeddings.ndim - 1) + [(0, width - d)])


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross entropy with integer labels."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=-1))


def l2_loss(new: jax.Array, old: jax.Array) -> jax.Array:
    """Mean squared distance between new embeddings (fitted) and frozen old ones."""
    diff = fit_width(new, old.shape[-1]) - jax.lax.stop_gradient(old)
    return jnp.mean(jnp.sum(diff * diff, axis=-1))


def influence_loss(
    new: jax.Array,
    labels: jax.Array,
    old_weights: jax.Array,
    *,
    kind: str = "cosine",
    scale: float = 16.0,
) -> jax.Array:
    """BCT: cross entropy of new embeddings under the frozen old classifier [C, d_old]."""
    weights = jax.lax.stop_gradient(old_weights)
    fitted = fit_width(new, weights.shape[-1])
    if kind != "linear":
        fitted = l2_normalize(fitted)
    return cross_entropy(classifier_logits(weights, fitted, kind=kind, scale=scale), labels)


def synthesize_classifier(
    old_weights: np.ndarray,
    old_embeddings: np.ndarray,
    labels: np.ndarray,
    seen: np.ndarray,
) -> np.ndarray:
    """The old classifier with a synthesized row for every class it never saw.

    Args:
      old_weights: [C, d_old] the old classifier (rows of unseen classes untrained).
      old_embeddings: [N, d_old] old-model embeddings of the new training set.
      labels: [N] their classes.
      seen: [C] bool, the classes of the old training set.

    Returns:
      [C, d_old]: seen rows kept, unseen rows replaced by the mean old
      embedding of the class, scaled to the mean norm of the seen rows (so
      a linear classifier weighs them alike). Unseen classes without any
      example keep their row.
    """
    out = np.array(old_weights, np.float32, copy=True)
    norm = np.linalg.norm(out[seen], axis=1).mean() if seen.any() else 1.0
    for c in np.flatnonzero(~seen):
        rows = old_embeddings[labels == c]
        if len(rows):
            mean = rows.mean(axis=0)
            out[c] = mean * (norm / max(np.linalg.norm(mean), 1e-12))
    return out


def contrastive_loss(
    new: jax.Array,
    old: jax.Array,
    labels: jax.Array,
    *,
    temperature: float = 0.01,
    hard_negatives: int = 0,
    ract: bool = False,
) -> jax.Array:
    """Contrastive compatibility (RACT with `ract=True`).

    Row i: positive cos(new_i, old_i); negatives cos(new_i, old_k) and, for
    RACT, cos(new_i, new_k), for every k of another class; each divided by
    the temperature; the K hardest kept when `hard_negatives` > 0.
    """
    old = l2_normalize(jax.lax.stop_gradient(old))
    anchor = l2_normalize(fit_width(new, old.shape[-1]))
    to_old = anchor @ old.T / temperature
    other_class = labels[:, None] != labels[None, :]
    negatives = jnp.where(other_class, to_old, MASKED)
    if ract:
        to_new = anchor @ jax.lax.stop_gradient(anchor).T / temperature
        negatives = jnp.concatenate([negatives, jnp.where(other_class, to_new, MASKED)], axis=1)
    return positive_cross_entropy(jnp.diagonal(to_old), negatives, hard_negatives)


def refine_prototypes(
    old: np.ndarray,
    new: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    lam: float = 0.9,
    temperature: float = 0.05,
    normalize: str = "row",
) -> tuple[np.ndarray, np.ndarray]:
    """UniBCT's structural prototype refinement, per class, in closed form.

    For class c with old features O_c (n x d_old) and new features N_c:
    E = N_c N_c^T / tau with the diagonal masked, P = softmax of E over each
    row (each node's weights over its neighbours sum to 1), and
    V* = (1 - lam) (I - lam P)^-1 O_c, the fixed point of V <- lam P V + (1 - lam) O_c.
    The prototype is the mean of V*'s rows.

    Args:
      old: [N, d_old] old-model embeddings.
      new: [N, d_new] new-model embeddings of the same items.
      labels: [N] classes.
      num_classes: C.
      lam: lambda.
      temperature: tau.
      normalize: "row" (UniBCT) or "column", which makes the prototype equal
        the plain class mean exactly (a silent no-op, kept to test against).

    Returns:
      (prototypes [C, d_old], present [C] bool: classes with at least one item).
    """
    protos = np.zeros((num_classes, old.shape[1]), np.float64)
    present = np.zeros(num_classes, bool)
    for c in np.unique(labels):
        o = old[labels == c].astype(np.float64)
        n = new[labels == c].astype(np.float64)
        present[c] = True
        if len(o) == 1:
            protos[c] = o[0]
            continue
        e = n @ n.T / temperature
        np.fill_diagonal(e, -np.inf)
        axis = 1 if normalize == "row" else 0
        e = np.exp(e - e.max(axis=axis, keepdims=True))
        p = e / e.sum(axis=axis, keepdims=True)
        v = (1 - lam) * np.linalg.solve(np.eye(len(o)) - lam * p, o)
        protos[c] = v.mean(axis=0)
    return protos.astype(np.float32), present
