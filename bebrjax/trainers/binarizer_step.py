"""The binarizer's training step: its loss (pair + distillation + an optional extra term).

`make_train_step` is what `bebrjax.trainers.binarizer.fit` runs; the
compatible trainer adds its cross-version term through `cross`.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bebrjax.data import PairedEmbeddings
from bebrjax.losses.pair_contrastive import pair_contrastive_loss
from bebrjax.losses.similarity_distill import similarity_distillation_loss
from bebrjax.models.binarizer import BinarizerOutput
from bebrjax.trainers.loop import State, jit_train_step, optimizer_step


def served_pairs(
    out: BinarizerOutput, n: int, *, asymmetric: bool, budgets: bool
) -> list[tuple[jax.Array, jax.Array]]:
    """The (query, stored doc) representations the pair loss scores.

    Args:
      out: the model's output on the queries [:n] then the docs [n:].
      n: the number of pairs.
      asymmetric: also score the asymmetric query, the pre-sign `logits`
        (served quantized to `query_bits` bits; continuous here), against
        each stored code.
      budgets: score every stored budget (the doc's prefixes u_d = 0..u,
        the query at as many loops), so that one run serves each; else only
        the full code.

    Returns:
      [(query representation [n, m], doc code [n, m]), ...]: the full
      code's symmetric pair first.
    """
    loops = out.prefixes.shape[1]
    pairs = []
    for u in range(loops - 1, -1, -1) if budgets else [loops - 1]:
        doc = out.prefixes[n:, u]
        pairs.append((out.prefixes[:n, u], doc))
        if asymmetric:
            pairs.append((out.logits[:n], doc))
    return pairs


def compute_loss(
    loss: ml_collections.ConfigDict,
    pairs: list[tuple[jax.Array, jax.Array]],
    x1: jax.Array,
    x2: jax.Array,
    labels: jax.Array,
    groups: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted training loss of a batch of encoded pairs.

    Args:
      loss: the `loss` section of the config (weights, temperatures, K).
      pairs: (query representations, doc codes) [n, m] each, as served
        (`served_pairs`); the pair term is their mean pair loss, the
        distillation term is on the first pair.
      x1: [n, d] the float queries (with x2, the distillation teacher).
      x2: [n, d] the float docs.
      labels: [n] int labels, negative for unlabelled.
      groups: [n] int item ids, negative for pairs of no group.

    Returns:
      (total, {term: value}) where total = pair_weight * pair + distill_weight * distill.
    """
    terms = {}
    z1, z2 = pairs[0]
    if loss.pair_weight:
        terms["pair"] = sum(
            pair_contrastive_loss(
                zq,
                zd,
                temperature=loss.temperature,
                hard_negatives=loss.hard_negatives,
                labels=labels if loss.mask_same_label else None,
                groups=groups if loss.mask_same_group else None,
            )
            for zq, zd in pairs
        ) / len(pairs)
    if loss.distill_weight:
        terms["distill"] = similarity_distillation_loss(
            jnp.concatenate([z1, z2]),
            jnp.concatenate([x1, x2]),
            teacher_temperature=loss.teacher_temperature,
            student_temperature=loss.student_temperature,
        )
    total = loss.pair_weight * terms.get("pair", 0.0) + loss.distill_weight * terms.get(
        "distill", 0.0
    )
    return total, terms


CrossTerm = Callable[[jax.Array, jax.Array, dict[str, jax.Array]], tuple[jax.Array, dict]]


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    loss: ml_collections.ConfigDict,
    mesh,
    cross: CrossTerm | None = None,
):
    """The jit'd step: batch sharded on `data`, state replicated and donated.

    BatchNorm sees both members of every pair (queries and docs are encoded
    in one call), and under jit its statistics span the global batch, so the
    step computes the same thing on any number of devices.

    Args:
      model: the binarizer.
      tx: the optimizer.
      loss: the `loss` section of the config.
      mesh: the device mesh.
      cross: an extra term `cross(query codes, doc codes, batch) -> (value,
        {term: value})` added to the loss (the compatible trainer's
        cross-version term, which reads the old codes from the batch).
    """

    def step(state: State, batch: dict[str, jax.Array]) -> tuple[State, dict[str, jax.Array]]:
        n = batch["query"].shape[0]

        def loss_fn(params):
            x = jnp.concatenate([batch["query"], batch["doc"]])
            out, updates = model.apply(
                {"params": params, "batch_stats": state["batch_stats"]},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            pairs = served_pairs(out, n, asymmetric=loss.asymmetric, budgets=loss.budgets)
            total, terms = compute_loss(
                loss,
                pairs,
                batch["query"],
                batch["doc"],
                batch["labels"],
                batch["groups"],
            )
            if cross is not None:
                value, more = cross(out.code[:n], out.code[n:], batch)
                total, terms = total + value, {**terms, **more}
            return total, (terms, updates["batch_stats"])

        return optimizer_step(state, tx, loss_fn)

    return jit_train_step(step, mesh)


def make_batch(data: PairedEmbeddings, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of one batch; missing labels or groups become -1 (none)."""

    def ids(array):
        return array[rows] if array is not None else np.full(len(rows), -1, np.int32)

    return {
        "query": data.query[rows],
        "doc": data.doc[rows],
        "labels": ids(data.labels),
        "groups": ids(data.groups),
    }
