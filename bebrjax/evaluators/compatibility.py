"""The cross-model evaluation protocol of compatible upgrades.

Queries and a gallery, each item labelled; a gallery item is relevant to a
query when it shares its label. For a pair of models (query model, gallery
model) `retrieval_metrics` gives mAP@R, Recall@k and TAR@FAR; search goes
through the exact `FloatIndex` (cosine, ties to the lower id). Across models
the query embedding is fitted to the gallery's width (truncated or
zero-padded) and renormalized, as the compatibility losses train it.

`compatibility_matrix` fills old/old, new/new, new->old (new queries against
the old gallery), old->new and the paragon's new/new, then

  update_gain = (M(new->old) - M(old/old)) / (M(paragon) - M(old/old))   (on mAP@R)
  negative_flip_rate = share of queries right at rank 1 under old/old and
                       wrong under new->old.

A model is compatible when M(new->old) > M(old/old).

With a forward adapter psi (DMU, BiCT) the stored old gallery is upgraded to
psi(old): the cell new->psi(old) holds new queries against it, and the same
gain, flip rate and criterion are reported for it under "adapted".
`evaluate_upgrade` embeds held-out data with trained models and fills the matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from jax.sharding import Mesh

from bebrjax.evaluators.retrieval import unit_rows
from bebrjax.search import FloatIndex
from bebrjax.sharding import apply_model


def fit_to(x: np.ndarray, width: int) -> np.ndarray:
    """Truncates or zero-pads embeddings to `width` and renormalizes them."""
    d = x.shape[1]
    x = x[:, :width] if d >= width else np.pad(x, ((0, 0), (0, width - d)))
    return unit_rows(x)


def tar_at_far(
    queries: np.ndarray,
    q_labels: np.ndarray,
    gallery: np.ndarray,
    g_labels: np.ndarray,
    fars: Sequence[float],
    block: int = 1024,
) -> dict[str, float]:
    """True-accept rate at each false-accept rate over all query-gallery pairs.

    Verification is pairwise by nature: scores of every pair are formed block
    by block and split into genuine (same label) and impostor pairs, which
    are kept (memory O(queries x gallery) floats); the threshold for FAR f is
    the impostor score that a fraction f of impostors exceeds. Without
    genuine or impostor pairs the rate is undefined (NaN).
    """
    genuine, impostor = [], []
    for start in range(0, len(queries), block):
        scores = queries[start : start + block] @ gallery.T
        same = q_labels[start : start + block, None] == g_labels[None, :]
        genuine.append(scores[same])
        impostor.append(scores[~same])
    genuine, impostor = np.concatenate(genuine), np.sort(np.concatenate(impostor))[::-1]
    if not len(genuine) or not len(impostor):
        return {f"TAR@FAR={far:g}": float("nan") for far in fars}
    out = {}
    for far in fars:
        index = min(int(far * len(impostor)), len(impostor) - 1)
        out[f"TAR@FAR={far:g}"] = float(np.mean(genuine > impostor[index]))
    return out


def retrieval_metrics(
    queries: np.ndarray,
    q_labels: np.ndarray,
    gallery: np.ndarray,
    g_labels: np.ndarray,
    *,
    ks: Sequence[int] = (1, 5, 10),
    fars: Sequence[float] = (1e-2, 1e-3),
    mesh: Mesh | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """mAP@R, Recall@k and TAR@FAR of queries against a gallery.

    Returns:
      (metrics, top1_correct [Q] bool).
    """
    queries = fit_to(queries, gallery.shape[1])
    gallery = unit_rows(gallery)
    per_class = np.bincount(g_labels, minlength=int(max(q_labels.max(), g_labels.max())) + 1)
    r = per_class[q_labels]
    k = int(min(max(r.max(), max(ks)), len(gallery)))
    index = FloatIndex(gallery.shape[1], mesh=mesh)
    index.add(gallery)
    _, ids = index.search(queries, k)
    relevant = g_labels[ids] == q_labels[:, None]
    ranks = np.arange(1, k + 1)
    within_r = ranks[None, :] <= r[:, None]
    precision = np.cumsum(relevant, axis=1) / ranks[None, :]
    ap_r = np.sum(precision * relevant * within_r, axis=1) / np.maximum(r, 1)
    metrics = {"mAP@R": float(np.mean(ap_r))}
    metrics.update({f"R@{kk}": float(np.mean(relevant[:, :kk].any(axis=1))) for kk in ks})
    metrics.update(tar_at_far(queries, q_labels, gallery, g_labels, fars))
    return metrics, relevant[:, 0]


def criteria(
    matrix: Mapping[str, Mapping[str, float]],
    top1: Mapping[str, np.ndarray],
    cross: str,
    metric: str,
) -> dict:
    """Update gain, negative-flip rate and the compatibility criterion of cell `cross`.

    Args:
      matrix: cells by name ("old/old", "paragon", `cross`), each {metric: value}.
      top1: per cell, [Q] bool: which queries were right at rank 1.
      cross: the cross-model cell judged ("new->old", "new->psi(old)").
      metric: the metric of the gain and the criterion.
    """
    old, paragon, value = (matrix[c][metric] for c in ("old/old", "paragon", cross))
    return {
        "update_gain": (value - old) / (paragon - old) if paragon != old else float("nan"),
        "negative_flip_rate": float(np.mean(top1["old/old"] & ~top1[cross])),
        "compatible": bool(value > old),
    }


def compatibility_matrix(
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]],
    q_labels: np.ndarray,
    g_labels: np.ndarray,
    *,
    ks: Sequence[int] = (1, 5, 10),
    fars: Sequence[float] = (1e-2, 1e-3),
    mesh: Mesh | None = None,
) -> dict:
    """The compatibility matrix, update gain and negative-flip rate.

    Args:
      embeddings: {"old": (queries, gallery), "new": (...), "paragon": (...)},
        and optionally "adapted": (None, psi(old gallery)).
      q_labels: [Q] query labels.
      g_labels: [G] gallery labels.
      ks: the k of Recall@k.
      fars: the FARs of TAR@FAR.
      mesh: optional mesh to shard the searches over.

    Returns:
      {"matrix": {"old/old": .., "new/new": .., "new->old": .., "old->new": ..,
      "paragon": .., ["new->psi(old)": ..]}, "update_gain": .., "negative_flip_rate": ..,
      "compatible": .., ["adapted": {"update_gain", "negative_flip_rate", "compatible"}]}
    """
    pairs = {
        "old/old": ("old", "old"),
        "new/new": ("new", "new"),
        "new->old": ("new", "old"),
        "old->new": ("old", "new"),
        "paragon": ("paragon", "paragon"),
    }
    if "adapted" in embeddings:
        pairs["new->psi(old)"] = ("new", "adapted")
    matrix, top1 = {}, {}
    for name, (q_model, g_model) in pairs.items():
        matrix[name], top1[name] = retrieval_metrics(
            embeddings[q_model][0],
            q_labels,
            embeddings[g_model][1],
            g_labels,
            ks=ks,
            fars=fars,
            mesh=mesh,
        )
    out = {"matrix": matrix, **criteria(matrix, top1, "new->old", "mAP@R")}
    if "adapted" in embeddings:
        out["adapted"] = criteria(matrix, top1, "new->psi(old)", "mAP@R")
    return out


def evaluate_upgrade(
    models: Mapping[str, tuple[Any, dict]],
    queries: np.ndarray,
    q_labels: np.ndarray,
    gallery: np.ndarray,
    g_labels: np.ndarray,
    *,
    mesh: Mesh,
    batch_size: int,
    adapter: tuple[Any, dict] | None = None,
    ks: Sequence[int] = (1, 5, 10),
    fars: Sequence[float] = (1e-2, 1e-3),
) -> dict:
    """The compatibility matrix of trained models on held-out queries and gallery.

    Args:
      models: {"old", "new", "paragon": (flax model, variables)}, models whose
        output holds an "embedding".
      queries: [Q, ...] the query inputs.
      q_labels: [Q] their labels.
      gallery: [G, ...] the gallery inputs.
      g_labels: [G] their labels.
      mesh: the mesh the models run and the searches shard on.
      batch_size: rows per batch of the models.
      adapter: (psi, its variables): the old gallery is also upgraded to
        psi(old) and searched by the new queries.
      ks: the k of Recall@k.
      fars: the FARs of TAR@FAR.
    """
    embeddings = {
        name: tuple(
            apply_model(model, variables, x, mesh, batch_size, "embedding")
            for x in (queries, gallery)
        )
        for name, (model, variables) in models.items()
    }
    if adapter is not None:
        upgraded = apply_model(*adapter, embeddings["old"][1], mesh, batch_size)
        embeddings["adapted"] = (None, upgraded)
    return compatibility_matrix(embeddings, q_labels, g_labels, ks=ks, fars=fars, mesh=mesh)
