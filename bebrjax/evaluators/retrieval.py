"""Query -> doc retrieval over paired embeddings: Recall@k of the relevant docs.

Query i's relevant doc is doc i or, when pairs share items (`items`), every
doc of query i's item (MS-COCO's 5 captions of an image). Recall@k is the
share of queries with at least one relevant doc among their top k results
(the usual MS-COCO image -> text convention: a hit when any of the image's
captions is retrieved); with one doc per item it is the plain Recall@k of
doc i, as in the BEBR authors' evaluation (one caption per image).

Every method is searched through an exact index of `bebrjax.search` (no
queries x gallery matrix is ever formed): float vectors by `FloatIndex`
(cosine), recurrent codes by `BinaryIndex` with SDC, sign hashes by
`BinaryIndex` with Hamming distance. Ties go to the lower id, as in faiss's
flat indexes (it matters for Hamming codes, where ties are common), so the
figures are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from bebrjax.models.binarizer import query_planes
from bebrjax.search import BinaryIndex, FloatIndex


def recall_at_k(
    ids: np.ndarray, ks: Sequence[int], items: np.ndarray | None = None
) -> dict[str, float]:
    """{"R@k": share of queries i with a relevant doc among ids[i, :k]}.

    Args:
      ids: [N, K] results of the N pairs' queries searched over their N docs,
        best first; K >= max(ks) unless the gallery is smaller (then every
        doc is within reach).
      ks: the k of Recall@k.
      items: optional [N] item ids of the pairs: doc j is relevant to query i
        when items[j] == items[i]. None: only doc i is.
    """
    if items is None:
        return recall_of(ids, np.arange(len(ids)), ks)
    items = np.asarray(items)
    return _recall_of_hits((ids >= 0) & (items[ids] == items[:, None]), ks)


def recall_of(ids: np.ndarray, relevant: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """{"R@k": share of queries i with a relevant doc among ids[i, :k]}.

    Args:
      ids: [Q, K] results, best first.
      relevant: [Q] the relevant doc of each query, or [Q, R] its relevant
        docs padded with -1 (`relevant_docs`: every doc of its item).
      ks: the k of Recall@k.

    A relevant doc that `ids` does not hold counts as a miss at every k, so
    R@k for k > ids.shape[1] is only a lower bound unless `ids` covers the
    whole gallery (as the evaluators' searches do when it is smaller).
    """
    relevant = np.asarray(relevant)
    if relevant.ndim == 1:
        return _recall_of_hits(ids == relevant[:, None], ks)
    found = (ids[:, :, None] == relevant[:, None, :]) & (relevant[:, None, :] >= 0)
    return _recall_of_hits(found.any(axis=2), ks)


def relevant_docs(items: np.ndarray) -> np.ndarray:
    """[N, R] int64: the docs of query i's item (every j with items[j] == items[i]), padded with -1.

    With `recall_of` it scores as `recall_at_k` does with `items`; R is the
    largest item's number of pairs.
    """
    items = np.asarray(items)
    order = np.argsort(items, kind="stable")
    starts = np.flatnonzero(np.diff(items[order], prepend=items[order][0] - 1))
    sizes = np.diff(starts, append=len(items))
    group = np.repeat(np.arange(len(sizes)), sizes)  # item number of each row of `order`
    table = np.full((len(sizes), sizes.max()), -1, np.int64)
    table[group, np.arange(len(items)) - starts[group]] = order
    of_row = np.empty(len(items), np.int64)
    of_row[order] = group
    return table[of_row]


def _recall_of_hits(hit: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Recall@k from [Q, K] booleans, True where a result is relevant to its query."""
    rank = np.where(hit.any(axis=1), hit.argmax(axis=1), np.inf)
    return {f"R@{k}": float(np.mean(rank < k)) for k in ks}


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit L2 norm (all-zero rows stay zero)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def float_recall(
    queries: np.ndarray,
    docs: np.ndarray,
    ks: Sequence[int],
    mesh: Mesh | None = None,
    items: np.ndarray | None = None,
) -> dict[str, float]:
    """Recall@k of float vectors under cosine similarity (exact search).

    `items` as in `recall_at_k`.
    """
    index = FloatIndex(docs.shape[1], mesh=mesh)
    index.add(unit_rows(docs))
    _, ids = index.search(unit_rows(queries), min(max(ks), len(docs)))
    return recall_at_k(ids, ks, items)


def code_recall(
    query_planes: np.ndarray,
    doc_planes: np.ndarray,
    ks: Sequence[int],
    *,
    metric: str = "ip",
    mesh: Mesh | None = None,
    kernel: str = "auto",
    items: np.ndarray | None = None,
) -> dict[str, float]:
    """Recall@k of bit-plane codes [N, u+1, m]: SDC ("ip", cosine order) or Hamming.

    `items` as in `recall_at_k`.
    """
    _, planes, m = doc_planes.shape
    index = BinaryIndex(m, planes - 1, metric, kernel=kernel, mesh=mesh)
    index.add(doc_planes)
    _, ids = index.search(query_planes, min(max(ks), len(doc_planes)))
    return recall_at_k(ids, ks, items)


def random_hash(x: np.ndarray, bits: int, seed: int) -> np.ndarray:
    """The baseline hash: signs of a Gaussian random projection, int8 planes [N, 1, bits]."""
    proj = np.random.default_rng(seed).standard_normal((x.shape[1], bits)).astype(np.float32)
    return np.where(np.asarray(x, np.float32) @ proj >= 0, 1, -1).astype(np.int8)[:, None, :]


def storage(bits: int, bytes_per_vector: float, float_bytes: int) -> dict[str, float]:
    """The storage columns of a results row: bits, bytes and compression against float32."""
    return {
        "bits": int(bits),
        "bytes_per_vector": float(bytes_per_vector),
        "compression": float(float_bytes / bytes_per_vector),
    }


def served_queries(queries: Any, query_bits: int, loops: int | None = None) -> np.ndarray:
    """The query planes a served index meets, from the binarizer's output on the queries.

    Args:
      queries: the binarizer's output (`planes` [N, u+1, m], `logits` [N, m]).
      query_bits: 0: the codes themselves (symmetric), cut to `loops` + 1
        planes; B >= 1: the pre-sign logits quantized to B bits (asymmetric).
      loops: the stored budget's loops, for symmetric queries (None: all).
    """
    if query_bits:
        return np.asarray(query_planes(jnp.asarray(queries.logits), query_bits))
    planes = queries.planes
    return planes if loops is None else np.ascontiguousarray(planes[:, : loops + 1])


def budgets(
    queries: Any,
    docs: Any,
    query_bits: int,
    ks: Sequence[int],
    *,
    mesh: Mesh | None = None,
    kernel: str = "auto",
    items: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Recall of every stored budget of one model: docs cut to their first u_d + 1 planes.

    One row per stored budget u_d = 0..u and query precision (the codes
    themselves at u_d loops, and `query_bits` when set): "stored_bits",
    "query_bits" (0 for codes), R@k and "bytes_per_vector" (the packed planes
    and the 4-byte 1/||b||).
    """
    rows = []
    _, loops, m = docs.planes.shape
    for u in range(loops):
        stored = np.ascontiguousarray(docs.planes[:, : u + 1])
        for bits in sorted({0, query_bits}):
            found = code_recall(
                served_queries(queries, bits, u), stored, ks, mesh=mesh, kernel=kernel, items=items
            )
            rows.append(
                {
                    "stored_bits": u + 1,
                    "query_bits": bits,
                    **found,
                    "bytes_per_vector": m * (u + 1) / 8 + 4,
                }
            )
    return rows
