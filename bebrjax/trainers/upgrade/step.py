"""The jit'd train steps of the upgrade trainer: a model against a frozen one, and psi.

A frozen model's variables (and the frozen classifier psi learns through)
are arguments of the compiled step (`jit_train_step(..., frozen=)`), not
values closed over, which XLA would bake into the program as constants.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from bebrjax.losses import compat
from bebrjax.trainers.loop import State, jit_train_step, optimizer_step
from bebrjax.trainers.upgrade.methods import Inputs, Method


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    method: Method,
    mesh,
    old_model: nn.Module | None = None,
    old_variables: dict | None = None,
):
    """A model's step: cross entropy plus compat.weight x `method`'s term.

    Args:
      model: the model trained (a `WithAdapter` when psi trains jointly).
      tx: its optimizer.
      config: the run's config.
      method: the compatibility method (`METHODS[...]`).
      mesh: the device mesh.
      old_model: the frozen old model, when the method embeds with it.
      old_variables: its variables.

    For a weighted method (DMU) the term is weighted per sample by the
    Darwinian backward weights, and psi's forward loss (weighted by the
    forward weights) is added at dmu.forward_weight.
    """
    old_config = config.old.model

    def step(state: State, batch: dict[str, jax.Array], old_variables: dict):
        x, y = batch["x"], batch["y"]
        classifier = state.get("aux", {}).get("classifier")
        old = None
        if method.old_embeddings:
            old = old_model.apply(old_variables, x, train=False)["embedding"]
        weights, logged, extra = (None, None), {}, {}
        if method.weighted:
            score = compat.discriminativeness(
                old,
                y,
                classifier,
                measure=config.dmu.measure,
                kind=old_config.classifier,
                scale=old_config.scale,
            )
            weights = compat.darwinian_weights(score, config.dmu.forward_emphasis)
            logged = {"discriminativeness": jnp.mean(score)}
        if method.adapter == "joint":
            extra = {"old": old}

        def loss_fn(params):
            out, updates = model.apply(
                {"params": params, "batch_stats": state["batch_stats"]},
                x,
                train=True,
                labels=y,
                mutable=["batch_stats"],
                **extra,
            )
            terms = {"ce": compat.cross_entropy(out["logits"], y)}
            total = terms["ce"]
            if method.term is not None:
                inputs = Inputs(out["embedding"], y, old, classifier, weights[0], config)
                terms["compat"] = method.term(inputs)
                total = total + config.compat.weight * terms["compat"]
            if method.adapter == "joint":
                terms["forward"] = compat.forward_loss(
                    out["adapted"],
                    out["embedding"],
                    y,
                    params["model"]["classifier"]["weights"],
                    kind=model.model.classifier,
                    scale=model.model.scale,
                    l2=config.forward.l2,
                    weights=weights[1],
                )
                total = total + config.dmu.forward_weight * terms["forward"]
            return total, ({**terms, **logged}, updates["batch_stats"])

        return optimizer_step(state, tx, loss_fn)

    return jit_train_step(step, mesh, old_variables if method.old_embeddings else {})


def make_forward_step(
    adapter: nn.Module,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    mesh,
    classifier: jax.Array,
):
    """BiCT's psi step on stored embeddings: the forward loss through the frozen new classifier.

    Batches hold "old" and "new" embeddings of the same items and "y".
    """
    new = config.new.model

    def step(state: State, batch: dict[str, jax.Array], classifier: jax.Array):
        def loss_fn(params):
            adapted, updates = adapter.apply(
                {"params": params, "batch_stats": state["batch_stats"]},
                batch["old"],
                train=True,
                mutable=["batch_stats"],
            )
            loss = compat.forward_loss(
                adapted,
                batch["new"],
                batch["y"],
                classifier,
                kind=new.classifier,
                scale=new.scale,
                l2=config.forward.l2,
            )
            return loss, ({"forward": loss}, updates["batch_stats"])

        return optimizer_step(state, tx, loss_fn)

    return jit_train_step(step, mesh, classifier)
