"""Embedding and classifier heads.

The classifier is a pure function of its weight matrix (`classifier_logits`),
so that a frozen old classifier (or refined prototypes) can score new
embeddings, as the influence losses of BCT and UniBCT do.

Kinds of classifier:
  * `linear`: W e (softmax classifier with a bias-free linear layer);
  * `cosine`: s * cos(W_c, e) (normalized softmax);
  * `arcface`: s * cos(theta_y + margin) for the true class (additive angular margin);
  * `cosface`: s * (cos(theta_y) - margin) for the true class (additive cosine margin).
Margins apply only in training, when labels are given.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from bebrjax.models.common import l2_normalize, xavier_normal

CLASSIFIERS = ("linear", "cosine", "arcface", "cosface")


class EmbeddingHead(nn.Module):
    """Projection to `dim`, optional BatchNorm, L2-normalized output."""

    dim: int
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps backbone features [N, f] to unit embeddings [N, dim]."""
        x = nn.Dense(self.dim, kernel_init=xavier_normal)(x)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
        return l2_normalize(x)


def classifier_logits(
    weights: jax.Array,
    embeddings: jax.Array,
    *,
    kind: str,
    scale: float = 16.0,
    margin: float = 0.0,
    labels: jax.Array | None = None,
) -> jax.Array:
    """Logits [N, C] of embeddings [N, d] under class weights [C, d].

    Args:
      weights: one row per class.
      embeddings: the (unit) embeddings.
      kind: one of `CLASSIFIERS`.
      scale: s of the normalized kinds.
      margin: ArcFace's angle (radians) or CosFace's cosine margin.
      labels: [N] true classes; the margin is applied only when given.
    """
    if kind == "linear":
        return embeddings @ weights.T
    if kind not in CLASSIFIERS:
        raise ValueError(f"classifier kind {kind!r}: expected one of {', '.join(CLASSIFIERS)}")
    cos = l2_normalize(embeddings) @ l2_normalize(weights).T
    if labels is None or kind == "cosine" or margin == 0.0:
        return scale * cos
    true = jax.nn.one_hot(labels, weights.shape[0], dtype=bool)
    if kind == "cosface":
        return scale * jnp.where(true, cos - margin, cos)
    theta = jnp.arccos(jnp.clip(cos, -1.0 + 1e-6, 1.0 - 1e-6))
    return scale * jnp.where(true, jnp.cos(theta + margin), cos)


class Classifier(nn.Module):
    """Class weights [C, d] and the logits of `classifier_logits`."""

    num_classes: int
    kind: str = "cosine"
    scale: float = 16.0
    margin: float = 0.0

    @nn.compact
    def __call__(self, embeddings: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        """Logits [N, C]; margins only when `labels` are given."""
        weights = self.param("weights", xavier_normal, (self.num_classes, embeddings.shape[-1]))
        return classifier_logits(
            weights, embeddings, kind=self.kind, scale=self.scale, margin=self.margin, labels=labels
        )
