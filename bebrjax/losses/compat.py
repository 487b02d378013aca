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
    of other classes, optionally only the K hardest. The old embeddings are
    frozen; RACT's new-model negatives carry gradient, as in Hot-Refresh's
    loss (pushing the new model's classes apart is what alleviates
    regression). The loss is one function of the global batch under one
    jit, with no gathered copies, so it and its gradient are the same on any
    number of devices.
  * `refine_prototypes` (UniBCT): structural prototype refinement, in closed form.
  * `discriminativeness` and `darwinian_weights` (DMU): per-sample weights
    of the compatibility loss and of the forward adaptation.

Every loss takes optional per-sample `weights` (no gradient flows into them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bebrjax.losses.pair_contrastive import MASKED, positive_cross_entropy, weighted_mean
from bebrjax.models.common import l2_normalize
from bebrjax.models.heads import classifier_logits


def fit_width(embeddings: jax.Array, width: int) -> jax.Array:
    """Truncates or zero-pads the last axis to `width`."""
    d = embeddings.shape[-1]
    if d >= width:
        return embeddings[..., :width]
    return jnp.pad(embeddings, [(0, 0)] * (embeddings.ndim - 1) + [(0, width - d)])


def cross_entropy(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """(Weighted) mean softmax cross entropy with integer labels."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return weighted_mean(-jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0], weights)


def l2_loss(new: jax.Array, old: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """(Weighted) mean squared distance between new embeddings (fitted) and frozen old ones."""
    diff = fit_width(new, old.shape[-1]) - jax.lax.stop_gradient(old)
    return weighted_mean(jnp.sum(diff * diff, axis=-1), weights)


def influence_loss(
    new: jax.Array,
    labels: jax.Array,
    old_weights: jax.Array,
    *,
    kind: str = "cosine",
    scale: float = 16.0,
    weights: jax.Array | None = None,
) -> jax.Array:
    """BCT: cross entropy of new embeddings under the frozen old classifier [C, d_old].

    The same loss with the new classifier and psi(old) embeddings is the
    forward influence of BiCT and DMU. `weights`: optional per-sample weights.
    """
    frozen = jax.lax.stop_gradient(old_weights)
    fitted = fit_width(new, frozen.shape[-1])
    if kind != "linear":
        fitted = l2_normalize(fitted)
    logits = classifier_logits(frozen, fitted, kind=kind, scale=scale)
    return cross_entropy(logits, labels, weights)


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
    weights: jax.Array | None = None,
) -> jax.Array:
    """Contrastive compatibility (RACT, Hot-Refresh's loss, with `ract=True`).

    Row i: positive cos(new_i, old_i); negatives cos(new_i, old_k) and, for
    RACT, cos(new_i, new_k), for every k of another class; each divided by
    the temperature; the K hardest kept when `hard_negatives` > 0; rows
    weighted by the optional per-sample `weights`.

    Gradients flow into `new` only, through every place it appears: the
    anchor new_i and, for RACT, the negatives new_k (so row i pushes new_k
    away from new_i as well as the reverse). `old` is frozen (stop-gradient).
    """
    old = l2_normalize(jax.lax.stop_gradient(old))
    anchor = l2_normalize(fit_width(new, old.shape[-1]))
    to_old = anchor @ old.T / temperature
    other_class = labels[:, None] != labels[None, :]
    negatives = jnp.where(other_class, to_old, MASKED)
    if ract:
        to_new = anchor @ anchor.T / temperature
        negatives = jnp.concatenate([negatives, jnp.where(other_class, to_new, MASKED)], axis=1)
    return positive_cross_entropy(jnp.diagonal(to_old), negatives, hard_negatives, weights)


MEASURES = ("probability", "entropy", "margin")


def discriminativeness(
    old: jax.Array,
    labels: jax.Array,
    old_weights: jax.Array,
    *,
    measure: str = "probability",
    kind: str = "cosine",
    scale: float = 16.0,
) -> jax.Array:
    """DMU: how discriminative each old feature is, in [0, 1], with no gradient.

    Scored by the frozen old classifier (rows of unseen classes synthesized,
    see `synthesize_classifier`), logits z = classifier_logits(W_old, old):
      * "probability": softmax(z)[y], the true class's probability;
      * "entropy": 1 - H(softmax(z)) / log C (label-free confidence);
      * "margin": sigmoid(z_y - max_{c != y} z_c), the prototype margin (with a
        cosine classifier the rows are class prototypes and z = s cos).

    Args:
      old: [N, d_old] old-model embeddings.
      labels: [N] true classes.
      old_weights: [C, d_old] the old classifier.
      measure: one of `MEASURES`.
      kind: the old classifier's kind.
      scale: its scale.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure {measure!r}: expected one of {', '.join(MEASURES)}")
    z = classifier_logits(old_weights, old, kind=kind, scale=scale)
    log_p = jax.nn.log_softmax(z, axis=-1)
    if measure == "probability":
        score = jnp.exp(jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0])
    elif measure == "entropy":
        entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
        score = 1.0 - entropy / jnp.log(z.shape[-1])
    else:
        true = jax.nn.one_hot(labels, z.shape[-1], dtype=bool)
        rival = jnp.max(jnp.where(true, -jnp.inf, z), axis=-1)
        score = jax.nn.sigmoid(jnp.sum(jnp.where(true, z, 0.0), axis=-1) - rival)
    return jax.lax.stop_gradient(jnp.clip(score, 0.0, 1.0))


def darwinian_weights(
    score: jax.Array, forward_emphasis: float, eps: float = 1e-6
) -> tuple[jax.Array, jax.Array]:
    """DMU's per-sample weights from discriminativeness scores d in [0, 1].

    Backward (selective compatibility): w = d / mean(d), so the batch's
    weights average 1 and BCT's loss scale is kept while poor old features
    count less. Forward (adaptation): v = (1 - a) + a (1 - d), normalized to
    mean 1, with a = `forward_emphasis` in [0, 1]: 0 weighs every sample
    alike, 1 trains psi only on the poor old features. Both are
    stop-gradient and normalized over the whole (global) batch.

    Returns:
      (w, v), each [N].
    """
    score = jax.lax.stop_gradient(score)
    forward = (1.0 - forward_emphasis) + forward_emphasis * (1.0 - score)
    return score / (jnp.mean(score) + eps), forward / (jnp.mean(forward) + eps)


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


def forward_loss(
    adapted: jax.Array,
    new: jax.Array,
    labels: jax.Array,
    new_weights: jax.Array,
    *,
    kind: str = "cosine",
    scale: float = 16.0,
    l2: float = 0.0,
    weights: jax.Array | None = None,
) -> jax.Array:
    """BiCT's forward influence (and DMU's adaptation): train psi towards the new space.

    The cross entropy of psi(phi_old(x)) under the frozen new classifier
    [C, d_new], plus `l2` x ||psi(phi_old(x)) - phi_new(x)||^2 with phi_new
    frozen. Only psi receives gradient.
    """
    loss = influence_loss(adapted, labels, new_weights, kind=kind, scale=scale, weights=weights)
    if l2:
        loss = loss + l2 * l2_loss(adapted, new, weights)
    return loss
