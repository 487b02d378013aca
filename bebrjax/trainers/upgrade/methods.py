"""The compatibility methods of the upgrade trainer, one table.

A `Method` says what a new model trained with it needs (the frozen old
model's embeddings of each batch, the old classifier, a refresh of that
classifier, a forward adapter psi) and the compatibility term it adds to the
new model's cross entropy. The train step (`step`) and the stages
(`stages`) read these fields; nothing else branches on a method's
name. A new method is a term function and one row of `METHODS`.

DMU and BiCT are public only as abstracts; what they do here is our reading
(see `compat.discriminativeness`, `compat.darwinian_weights`,
`compat.forward_loss` and docs/upgrades.md, "Our reading"):
  * DMU: the per-sample compatibility loss (`dmu.loss`: influence or
    contrastive) weighted by w = d / mean(d), d the old feature's
    discriminativeness (`dmu.measure`); psi trained jointly, through the new
    classifier (stop-gradient, so only psi learns from it; the one optimizer's
    global-norm clip still couples the step sizes), weighted towards poor old
    features (`dmu.forward_emphasis`), at weight `dmu.forward_weight`.
  * BiCT: stage 1 is BCT at lambda_bc = compat.weight; psi is trained after
    the new model, on embeddings only (no raw data is needed once phi_old(x)
    and phi_new(x) are stored), by the forward influence plus
    `forward.l2` x L2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import ml_collections

from bebrjax.losses import compat


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a compatibility term sees in one step.

    Attributes:
      new: [B, d_new] the new model's embeddings (the only values with gradient).
      labels: [B] classes.
      old: [B, d_old] the frozen old model's embeddings, when the method needs them.
      classifier: [C, d_old] the frozen old classifier (unseen classes'
        rows synthesized; UniBCT's refined prototypes), when the method needs it.
      weights: [B] per-sample weights (DMU), or None.
      config: the run's config.
    """

    new: jax.Array
    labels: jax.Array
    old: jax.Array | None
    classifier: jax.Array | None
    weights: jax.Array | None
    config: ml_collections.ConfigDict


def l2_term(b: Inputs) -> jax.Array:
    """||phi_new(x) - phi_old(x)||^2."""
    return compat.l2_loss(b.new, b.old, b.weights)


def contrastive_term(b: Inputs, ract: bool = False) -> jax.Array:
    """New anchors, old positives, old negatives of other classes (and new ones for RACT)."""
    c = b.config.compat
    return compat.contrastive_loss(
        b.new,
        b.old,
        b.labels,
        temperature=c.temperature,
        hard_negatives=c.hard_negatives,
        ract=ract,
        weights=b.weights,
    )


def ract_term(b: Inputs) -> jax.Array:
    """Hot-Refresh's RACT: the contrastive term with new-model negatives as well."""
    return contrastive_term(b, ract=True)


def influence_term(b: Inputs, kind: str | None = None) -> jax.Array:
    """BCT: the new embedding classified by the frozen old classifier."""
    old = b.config.old.model
    return compat.influence_loss(
        b.new,
        b.labels,
        b.classifier,
        kind=kind or old.classifier,
        scale=old.scale,
        weights=b.weights,
    )


def unibct_term(b: Inputs) -> jax.Array:
    """UniBCT: the influence loss on the refined prototypes, with cosine logits."""
    return influence_term(b, kind="cosine")


def dmu_term(b: Inputs) -> jax.Array:
    """DMU: BCT's influence or the contrastive loss (`dmu.loss`), weighted per sample."""
    return {"influence": influence_term, "contrastive": contrastive_term}[b.config.dmu.loss](b)


@dataclasses.dataclass(frozen=True)
class Method:
    """A compatibility method: what its new model needs, and its term.

    Attributes:
      term: the compatibility term, weighted by compat.weight; None adds none.
      old_embeddings: each step embeds its batch with the frozen old model.
      old_classifier: the state carries the frozen old classifier, a row
        synthesized for every class the old model never saw.
      refresh: the old classifier's rows are refined every
        compat.refresh_every steps (UniBCT's structural prototypes).
      weighted: per-sample Darwinian weights on the term, and on psi's
        forward loss (DMU).
      adapter: "joint" (psi trained in the new model's steps), "forward" (psi
        trained in a stage of its own after it) or None.
      sections: the config sections a stage trained with the method depends
        on besides the common ones (recorded in its stage.json).
    """

    term: Callable[[Inputs], jax.Array] | None
    old_embeddings: bool = False
    old_classifier: bool = False
    refresh: bool = False
    weighted: bool = False
    adapter: str | None = None
    sections: tuple[str, ...] = ("compat",)


METHODS: dict[str, Method] = {
    "independent": Method(None, sections=()),
    "l2": Method(l2_term, old_embeddings=True),
    "bct": Method(influence_term, old_classifier=True),
    "contrastive": Method(contrastive_term, old_embeddings=True),
    "ract": Method(ract_term, old_embeddings=True),
    "unibct": Method(unibct_term, old_classifier=True, refresh=True),
    "dmu": Method(
        dmu_term,
        old_embeddings=True,
        old_classifier=True,
        weighted=True,
        adapter="joint",
        sections=("compat", "dmu", "forward"),
    ),
    "bict": Method(influence_term, old_classifier=True, adapter="forward"),
}
