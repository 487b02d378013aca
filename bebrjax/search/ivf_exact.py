"""The host's exact ranking over an IVF query's probed lists: the last step of `IVFIndex.search`.

The device returns each query's float top k + spare candidates
(`bebrjax.search.probed`); where the k-th score is tied past them, the
query is ranked here over every document of its probed lists, exactly:
`probed_scores` for SDC (`topk.exact_topk`'s fallback) and
`exact_float_topk` for Hamming and u = 0, whose float scores are exact.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bebrjax.search import topk
from bebrjax.search.index import BinaryIndex
from bebrjax.search.ivf_scan import PADDING

Members = Callable[[np.ndarray], np.ndarray]  # lists -> the ids of their documents


def probed_scores(
    codes: BinaryIndex, members: Members, query_words: np.ndarray, lists: np.ndarray, scale: float
) -> tuple[topk.SdcScores, np.ndarray]:
    """(exact scores, ids) of one query against every document of its probed `lists`."""
    ids = members(lists)
    return topk.SdcScores(*codes.exact_ints(query_words, ids), scale), ids


def exact_float_topk(
    codes: BinaryIndex,
    members: Members,
    scores: np.ndarray,
    ids: np.ndarray,
    k: int,
    complete: np.ndarray,
    words: np.ndarray,
    probes: np.ndarray,
    u_q: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The top k under (float score desc, id asc) when the floats are exact (Hamming, u = 0).

    A query whose k-th score also belongs to a document past its candidates
    is scored on the host over all its probed documents, with the device's
    float arithmetic (`scoring.code_scores`).

    Args:
      codes: the documents.
      members: the documents of some lists (the device layout's `members`).
      scores: the device's float candidates' scores [Q, width], best first.
      ids: their ids [Q, width] (-1: none).
      k: results per query.
      complete: [Q] whether a query's candidates are all its probed documents.
      words: the queries' packed codes.
      probes: each query's lists [Q, nprobe].
      u_q: the queries' loops.
    """
    certified = complete | (scores[:, k - 1] > scores[:, -1])
    for row in np.flatnonzero(~certified):
        every = members(probes[row])
        ip, _ = codes.exact_ints(words[row], every)
        if codes.metric == "hamming":
            floats = -((codes.m - ip) // 2).astype(np.float32)
        else:
            scale = codes._inv_norms[every] * np.float32(2.0 ** -(codes.u + u_q))
            floats = ip.astype(np.float32) * scale.astype(np.float32)
        best = np.lexsort((every, -floats))[: scores.shape[1]]
        scores[row], ids[row] = PADDING, -1
        scores[row, : len(best)], ids[row, : len(best)] = floats[best], every[best]
    return scores[:, :k], ids[:, :k]
