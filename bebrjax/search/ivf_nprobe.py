"""An IVF index's default nprobe: the fewest lists that recall its exhaustive top 10.

    nprobe, recall = choose(ivf)    # then ivf.nprobe = nprobe; ivf.save(...)

`choose` draws `QUERIES` of the index's documents (seeded) and searches
with their own codes as queries (the planes all its versions share) at
nprobe 1, 2, 4, 8, ...: the first whose Recall@10 of the exhaustive answer
reaches `TARGET` is the default, nlist when none below nlist does. A
query's own document is left out of both of its answers (it is always
found, and would lift the recall by up to 1/10), so the recall is that of
its 10 nearest other documents. An nprobe whose lists hold fewer than 11
documents for some query does not qualify. The queries are codes, so for
an index served with float queries of B bits (`query_bits`) the measure
is a close estimate, not the served recall.
"""

from __future__ import annotations

import numpy as np

from bebrjax.search import codes as codes_lib
from bebrjax.search import ivf_train
from bebrjax.search.ivf import IVFIndex

TARGET = 0.95  # Recall@10 of the exhaustive answer
QUERIES = 256  # documents drawn as queries
K = 10


def choose(
    ivf: IVFIndex, *, target: float = TARGET, queries: int = QUERIES, seed: int = 0
) -> tuple[int, float]:
    """The smallest power-of-two nprobe (or nlist) whose Recall@10 reaches `target`.

    Args:
      ivf: a trained IVF index holding documents.
      target: the Recall@10 of the exhaustive top 10 to reach.
      queries: documents drawn as queries (all of them when there are fewer).
      seed: the draw's seed.

    Returns:
      (nprobe, its measured recall); (nlist, 1.0) when no smaller nprobe
      reaches the target (the exhaustive answer itself).
    """
    k = min(K, ivf.ntotal - 1)  # results besides the query's own document
    if k < 1:
        return ivf.nlist, 1.0
    chosen = ivf_train.sample_ids(ivf.ntotal, queries, seed)
    ids = np.arange(ivf.ntotal) if chosen is None else chosen
    planes = ivf.codes.planes(ids)[:, : min(ivf.codes.versions.values()) + 1]
    truth = _others(ivf.codes.search(planes, k + 1)[1], ids, k)
    sizes, ints = ivf.list_sizes(), codes_lib.decode_int(planes)
    nprobe = 1
    while nprobe < ivf.nlist:
        if sizes[ivf.probes(ints, nprobe)].sum(1).min() > k:
            found = _others(ivf.search(planes, k + 1, nprobe)[1], ids, k)
            hits = [len(np.intersect1d(a, b)) for a, b in zip(found, truth, strict=True)]
            recall = np.mean(hits) / k
            if recall >= target:
                return nprobe, float(recall)
        nprobe *= 2
    return ivf.nlist, 1.0


def _others(found: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """The first k of each row of `found` [Q, k+1] other than the query's own document."""
    return np.stack([row[row != own][:k] for row, own in zip(found, ids, strict=True)])
