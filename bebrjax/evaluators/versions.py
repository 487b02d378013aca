"""Binary codes across model versions: the compatibility matrix and backfill curves.

Held-out pairs (query i's relevant doc is doc i), each encoded by an old and
a new model. Codes are searched exactly by SDC through `BinaryIndex`; codes
of different loops compare exactly (`bebrjax.search.scoring`), codes of
different widths on their shared prefix (both cut to the narrower width).

`compatibility_matrix` fills the cells (query codes -> gallery codes)

    old/old, new/new, new->old, old->new, new->psi(old), paragon

("paragon": an independently trained new binarizer on its own codes), the
same cells on the float embeddings, and

    update_gain        = (R(new->old) - R(old/old)) / (R(paragon) - R(old/old))  (on R@10)
    negative_flip_rate = share of queries old/old finds at rank 1 and new->old misses.

`backfill_curves` re-encodes a growing fraction f of the gallery with the new
model and searches one mixed-version index (every document scored with the
code of its own version) at each f:

  * random: the compatible new model, documents backfilled in a seeded
    random order;
  * worst_first: the same, the documents whose old codes are the most
    ambiguous in the old gallery first (`ambiguity`; our reading of
    FastFill, which orders by a learned uncertainty of the old feature);
  * psi: the gallery first moved to new-version codes by psi (no raw data),
    then backfilled in the random order: its f = 0 point is new->psi(old);
  * independent: an independently trained new binarizer's queries against
    the gallery backfilled with its own codes (what a user without
    compatible training gets if they switch the queries at once);
  * keep_old: old queries on the old gallery until the whole gallery is
    re-encoded, then the independent model's new/new (the other choice a
    user without compatible training has).

With scoring plans (`bebrjax.search.plan`), the version-aware policies
search the same mixed index with one query code per query model
(`bebrjax.search.fusion`): each document scored by the queries of the
models that may score its version, calibrated and fused:

  * version_aware: old documents scored by the old and the compatible new
    query (fused), re-encoded ones by the new query; random order;
  * version_aware_independent: the same, re-encoding with the independent
    new binarizer (its queries score what it re-encoded);
  * *_worst_first: the same in the worst-first order.

`fused_cell` is the "new+old->old" cell: the fused score over the all-old
gallery (f = 0).

Each curve's area (trapezoid rule over f in [0, 1]) sums it up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from jax.sharding import Mesh

from bebrjax.evaluators.compatibility import criteria, fit_to
from bebrjax.evaluators.retrieval import recall_at_k
from bebrjax.search import BinaryIndex, FloatIndex
from bebrjax.search import codes as codes_lib
from bebrjax.search.fusion import search_fused
from bebrjax.search.plan import ScoringPlan

# Cell name -> (query model, gallery model).
CELLS = {
    "old/old": ("old", "old"),
    "new/new": ("new", "new"),
    "new->old": ("new", "old"),
    "old->new": ("old", "new"),
    "new->psi(old)": ("new", "psi"),
    "paragon": ("independent", "independent"),
}


def search_codes(
    query_planes: np.ndarray,
    doc_planes: np.ndarray,
    k: int,
    *,
    mesh: Mesh | None = None,
    kernel: str = "auto",
) -> np.ndarray:
    """Ids [Q, k] of the exact SDC search of codes of any loops; widths cut to the shared prefix."""
    width = min(query_planes.shape[-1], doc_planes.shape[-1])
    index = BinaryIndex(width, doc_planes.shape[1] - 1, kernel=kernel, mesh=mesh)
    index.add(np.ascontiguousarray(doc_planes[..., :width]))
    _, ids = index.search(np.ascontiguousarray(query_planes[..., :width]), k)
    return ids


def compatibility_matrix(
    queries: Mapping[str, np.ndarray],
    docs: Mapping[str, np.ndarray],
    float_queries: Mapping[str, np.ndarray],
    float_docs: Mapping[str, np.ndarray],
    *,
    ks: Sequence[int] = (1, 5, 10),
    mesh: Mesh | None = None,
    kernel: str = "auto",
) -> dict:
    """The binary and float compatibility matrices, update gain and negative flips.

    Args:
      queries: query bit planes by model: "old", "new", "independent".
      docs: doc bit planes by model: the same, plus "psi" (the old doc codes
        moved to the new version by psi).
      float_queries: float query embeddings by model: "old", "new".
      float_docs: float doc embeddings: "old", "new" and "psi" (the float
        reference of psi: the old doc embeddings mapped to the new space).
      ks: the k of Recall@k.
      mesh: optional mesh to shard the searches over.
      kernel: the SDC kernel.

    Returns:
      {"binary": {cell: {"R@k": ..}}, "float": {cell: ..}, "criteria":
      {"binary" | "float": {"update_gain", "negative_flip_rate",
      "compatible", "psi": {the same for new->psi(old)}}}}.
    """
    k = min(max(ks), len(next(iter(docs.values()))))
    binary, float_cells, top1 = {}, {}, {}
    for name, (q, g) in CELLS.items():
        ids = search_codes(queries[q], docs[g], k, mesh=mesh, kernel=kernel)
        binary[name] = recall_at_k(ids, ks)
        top1[name] = ids[:, 0] == np.arange(len(ids))
    float_top1 = {}
    for name, (q, g) in CELLS.items():
        if name == "paragon":
            q, g = "new", "new"
        query = fit_to(float_queries[q], float_docs[g].shape[1])
        float_cells[name], float_top1[name] = _float_cell(query, float_docs[g], ks, mesh)
    return {
        "binary": binary,
        "float": float_cells,
        "criteria": {
            "binary": _criteria(binary, top1, max(ks)),
            "float": _criteria(float_cells, float_top1, max(ks)),
        },
    }


def _float_cell(query: np.ndarray, gallery: np.ndarray, ks, mesh) -> tuple[dict, np.ndarray]:
    """Recall@k of exact float cosine search, and which queries were right at rank 1."""
    index = FloatIndex(gallery.shape[1], mesh=mesh)
    index.add(fit_to(gallery, gallery.shape[1]))
    _, ids = index.search(query, min(max(ks), len(gallery)))
    return recall_at_k(ids, ks), ids[:, 0] == np.arange(len(ids))


def _criteria(cells: Mapping[str, Mapping[str, float]], top1: Mapping[str, np.ndarray], k: int):
    key = f"R@{k}"
    return {
        **criteria(cells, top1, "new->old", key),
        "psi": criteria(cells, top1, "new->psi(old)", key),
    }


def ambiguity(
    doc_planes: np.ndarray, *, mesh: Mesh | None = None, kernel: str = "auto"
) -> np.ndarray:
    """How crowded each document's code is in its gallery, [n] float (higher: more ambiguous).

    A document's ambiguity is the cosine of its code to the nearest other
    document's code in the same gallery (exact SDC search of the gallery by
    itself). It needs the stored codes only, so it can order a backfill
    before anything is re-encoded: a doc whose old code sits close to
    another's is the one old codes serve worst.
    """
    index = BinaryIndex(doc_planes.shape[2], doc_planes.shape[1] - 1, kernel=kernel, mesh=mesh)
    index.add(doc_planes)
    scores, ids = index.search(doc_planes, 2)
    nearest = np.where(ids[:, 0] == np.arange(len(ids)), scores[:, 1], scores[:, 0])
    return nearest / np.linalg.norm(codes_lib.decode(doc_planes), axis=1)


def mixed_curve(
    query_planes: np.ndarray | Mapping[str, np.ndarray],
    start: tuple[str, np.ndarray],
    backfill: tuple[str, np.ndarray],
    order: np.ndarray,
    fractions: Sequence[float],
    *,
    k: int = 10,
    plan: ScoringPlan | None = None,
    mesh: Mesh | None = None,
    kernel: str = "auto",
) -> list[float]:
    """Recall@k of queries against one mixed-version index as it is backfilled.

    Args:
      query_planes: [Q, u_q+1, m_q] query codes; query i's relevant doc is doc
        i. With a plan: query model -> its codes of the same queries.
      start: (version, planes [N, u+1, m]) the gallery's codes before backfilling.
      backfill: (version, planes [N, u'+1, m']) the codes that replace them.
      order: the doc ids in backfill order (a permutation of N).
      fractions: ascending fractions f of the gallery backfilled at each point.
      k: the k of Recall@k.
      plan: search version-aware (`search.fusion`) under this plan, restricted
        to the versions the index holds at each point; None: one query code.
      mesh: optional mesh to shard the searches over.
      kernel: the SDC kernel.

    Returns:
      Recall@k at each f. Codes of unequal widths sit in the index on their
      shared prefix.
    """
    (start_version, start_planes), (new_version, new_planes) = start, backfill
    if plan is None:
        width = min(query_planes.shape[-1], start_planes.shape[-1], new_planes.shape[-1])
        queries = np.ascontiguousarray(query_planes[..., :width])
    else:
        width, queries = plan.m, query_planes
    index = BinaryIndex(
        width, start_planes.shape[1] - 1, version=start_version, kernel=kernel, mesh=mesh
    )
    index.add(np.ascontiguousarray(start_planes[..., :width]))
    done, curve = 0, []
    for f in fractions:
        upto = int(round(f * len(order)))
        if upto > done:
            ids = order[done:upto]
            index.replace(ids, np.ascontiguousarray(new_planes[ids, :, :width]), new_version)
            done = upto
        kk = min(k, index.ntotal)
        if plan is None:
            _, found = index.search(queries, kk)
        else:
            _, found = fused_search(index, queries, plan, kk)
        curve.append(recall_at_k(found, (k,))[f"R@{k}"])
    return curve


def fused_search(
    index: BinaryIndex, queries: Mapping[str, np.ndarray], plan: ScoringPlan, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """`search_fused` under `plan` restricted to the index's versions and their query models."""
    fusion = plan.only(list(index.versions)).fusion()
    return search_fused(index, {q: queries[q] for q in fusion.models}, fusion, k)


def fused_cell(
    queries: Mapping[str, np.ndarray],
    old_docs: np.ndarray,
    plan: ScoringPlan,
    *,
    ks: Sequence[int] = (1, 5, 10),
    mesh: Mesh | None = None,
    kernel: str = "auto",
) -> dict[str, float]:
    """Recall@k of the fused score over the all-old gallery ("new+old->old").

    Each old document is scored by every query model the plan lets score
    version "old" (e.g. the old and the compatible new query), calibrated and
    fused: what a version-aware search gives before any re-encoding.
    """
    index = BinaryIndex(plan.m, old_docs.shape[1] - 1, version="old", kernel=kernel, mesh=mesh)
    index.add(np.ascontiguousarray(old_docs[..., : plan.m]))
    _, ids = fused_search(index, queries, plan, min(max(ks), index.ntotal))
    return recall_at_k(ids, ks)


def area(fractions: Sequence[float], curve: Sequence[float]) -> float:
    """The area under a backfill curve (trapezoid rule over f)."""
    return float(np.trapezoid(np.asarray(curve, np.float64), np.asarray(fractions, np.float64)))


def backfill_curves(
    queries: Mapping[str, np.ndarray],
    docs: Mapping[str, np.ndarray],
    orders: Mapping[str, np.ndarray],
    binary: Mapping[str, Mapping[str, float]],
    *,
    plans: Mapping[str, ScoringPlan] | None = None,
    points: int = 11,
    k: int = 10,
    mesh: Mesh | None = None,
    kernel: str = "auto",
) -> dict:
    """Recall@k against the fraction of the gallery backfilled, per strategy, and their areas.

    Args:
      queries: query planes by model ("new", "independent").
      docs: doc planes by model ("old", "new", "independent", "psi").
      orders: backfill orders (permutations of the docs): "random", "worst_first".
      binary: the binary matrix (for keep_old: old/old, then the paragon).
      plans: scoring plans of the version-aware policies: "version_aware"
        (old docs scored by the old and new queries, re-encoded ones by the
        new) and "version_aware_independent" (the same, re-encoding with
        the independent binarizer); `queries` then holds "old" too.
      points: fractions 0, 1/(points-1), ..., 1.
      k: the k of Recall@k.
      mesh: optional mesh to shard the searches over.
      kernel: the SDC kernel.

    Returns:
      {"k": k, "fractions": [..], "curves": {name: [R@k per f]}, "auc": {name: area}}.
    """
    fractions = [round(i / (points - 1), 6) for i in range(points)]

    def curve(query, start, backfill, order, plan=None):
        return mixed_curve(
            queries if plan is not None else queries[query],
            (start, docs[start]),
            (backfill, docs[backfill]),
            orders[order],
            fractions,
            k=k,
            plan=plan,
            mesh=mesh,
            kernel=kernel,
        )

    key = f"R@{k}"
    curves = {
        "random": curve("new", "old", "new", "random"),
        "worst_first": curve("new", "old", "new", "worst_first"),
        "psi": curve("new", "psi", "new", "random"),
        "independent": curve("independent", "old", "independent", "random"),
        "keep_old": [
            binary["old/old"][key] if f < 1 else binary["paragon"][key] for f in fractions
        ],
    }
    for name, plan in (plans or {}).items():
        backfill = next(v.encoder for v in plan.versions if v.name != "old")
        for order, suffix in (("random", ""), ("worst_first", "_worst_first")):
            curves[name + suffix] = curve(None, "old", backfill, order, plan)
    auc = {name: area(fractions, values) for name, values in curves.items()}
    return {
        "k": k,
        "fractions": fractions,
        "curves": curves,
        "auc": auc,
        "best": max(auc, key=auc.get),
    }
