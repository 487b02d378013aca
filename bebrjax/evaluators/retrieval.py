"""Query -> doc retrieval over paired embeddings: Recall@k of the paired doc.

Query i's relevant doc is doc i. Ranks are exact and deterministic: a doc
ranks ahead of the positive when it scores higher, or scores the same and has
a lower id (the tie rule of faiss's flat indexes, which matters for Hamming
codes where ties are common).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bebrjax.models.binarizer import l2_normalize


@jax.jit
def _block_ranks(queries: jax.Array, docs: jax.Array, offset: jax.Array) -> jax.Array:
    """0-based ranks of docs[offset + j] for queries[j], cosine similarity."""
    scores = l2_normalize(queries) @ l2_normalize(docs).T
    rows = jnp.arange(queries.shape[0])
    positive_ids = offset + rows
    positive = scores[rows, positive_ids][:, None]
    ids = jnp.arange(docs.shape[0])[None, :]
    ahead = (scores > positive) | ((scores == positive) & (ids < positive_ids[:, None]))
    return jnp.sum(ahead, axis=1)


def positive_ranks(queries: np.ndarray, docs: np.ndarray, *, block: int = 1024) -> np.ndarray:
    """The rank (0 = first) of doc i among all docs for query i, by cosine.

    Args:
      queries: [N, m] query vectors (float, +-1 codes or recurrent codes).
      docs: [N, m] doc vectors; doc i is query i's positive.
      block: queries scored at once; memory is O(block * N).

    Returns:
      [N] int64 ranks.
    """
    if queries.shape != docs.shape:
        raise ValueError(f"queries {queries.shape} and docs {docs.shape} must match")
    docs = jnp.asarray(docs, jnp.float32)
    out = []
    for start in range(0, queries.shape[0], block):
        chunk = jnp.asarray(queries[start : start + block], jnp.float32)
        pad = block - chunk.shape[0]
        if pad and queries.shape[0] > block:  # keep one compiled shape
            chunk = jnp.pad(chunk, ((0, pad), (0, 0)), constant_values=1.0)
        ranks = _block_ranks(chunk, docs, jnp.int32(start))
        out.append(np.asarray(ranks)[: block - pad])
    return np.concatenate(out).astype(np.int64)


def recall_at_k(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """{"R@k": share of queries whose positive ranks within the top k}."""
    return {f"R@{k}": float(np.mean(ranks < k)) for k in ks}


def random_hash(x: np.ndarray, bits: int, seed: int) -> np.ndarray:
    """The baseline hash: sign of a Gaussian random projection to `bits` dims, +-1 float32."""
    proj = np.random.default_rng(seed).standard_normal((x.shape[1], bits)).astype(np.float32)
    return np.where(np.asarray(x, np.float32) @ proj >= 0, 1.0, -1.0).astype(np.float32)


def retrieval_entry(
    queries: np.ndarray,
    docs: np.ndarray,
    *,
    bits: int,
    bytes_per_vector: float,
    float_bytes: int,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """One row of the results: Recall@k plus the storage of a vector.

    Args:
      queries: [N, m] encoded queries.
      docs: [N, m] encoded docs.
      bits: bits per stored vector.
      bytes_per_vector: bytes per stored doc (codes plus anything stored beside).
      float_bytes: bytes of the raw float32 embedding, for the compression ratio.
      ks: the k of Recall@k.
    """
    entry = recall_at_k(positive_ranks(queries, docs), ks)
    entry.update(
        bits=int(bits),
        bytes_per_vector=float(bytes_per_vector),
        compression=float(float_bytes / bytes_per_vector),
    )
    return entry
