"""Queries whose k-th score ties past their float candidates, ranked over a bounded shortlist.

`topk.exact_topk` certifies a query's exact top k from its float top K
(K = k + `topk.SPARE`) unless more than K - k documents tie or near-tie its
k-th score, as when a document is stored more than K times. Such a query
is resolved here by a second device pass over the gallery that returns at
most K + 1 ids per query, never its N scores.

Why the shortlist holds the exact top k. Rank the K exactly (exact keys)
and let T be the k-th of them under (exact score S descending, id
ascending). A document ranked below T is beaten by k documents, so only
documents d outside the K with S_d >= S_T can join the top k; their float
scores f_d satisfy f_d + B(f_d) >= S_T (B = `scoring.SCORE_TOLERANCE` |f|),
which puts them in the band f_d >= lo. The K are the prefix of the order
(f descending, id ascending), so a band document is outside the K exactly
when (f, -id) is below the K's last entry. Documents of one code class
(equal integers ip and norm of `scoring.exact_ints`) have equal exact and
float scores, so the K hold the lowest ids of every class they meet; a
class of which k members are held needs no more (k of its own beat every
other member), and the device leaves it out, comparing each document's
integers (`scoring.code_ip`, `scoring.code_norms`) with the class's. What
is left (the "others") comes back lowest ids first, a page of K at a
time: the shortlist is complete when a page is not full. A page that is
full teaches the host the classes of its documents and the next page
starts past it; after `ROUNDS` full pages the query goes to the host's
whole-gallery ranking instead (many distinct codes near one score).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bebrjax.search import scoring, topk
from bebrjax.search.blocked import Scorer

ROUNDS = 4  # pages of band documents per query before the whole-gallery ranking
_NO_CLASS = (0, -1)  # pads the classes left out: no document has norm -1

# (query dict, width, scorer) -> (float32 scores, int64 global ids) [Q, width]: a search.
RunFn = Callable[[dict[str, np.ndarray], int, Scorer], tuple[np.ndarray, np.ndarray]]
ExactIntsFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def band_scores(
    queries: dict[str, jax.Array], block: dict[str, jax.Array], *, m: int, kernel: str
) -> jax.Array:
    """0 for the documents of each query's band outside its candidates and classes, else -inf.

    Args:
      queries: as for `scoring.code_scores`, and per query: "lo" float32 (the
        band's lowest float score), "last_score" float32 and "last_id" int32
        (the candidates' last entry), "cursor" int32 (only ids above it), and
        "classes" int32 [C, 2] ((ip, norm) of the classes left out).
      block: as for `scoring.code_scores`, with the documents' "id" [T, b].
      m: code width.
      kernel: the index's kernel (its floats are the scan's).

    Returns:
      float32 [T, Q, b].
    """
    ip = scoring.code_ip(queries, block, m=m, kernel=kernel)
    score = scoring.ip_scores(ip, queries, block, m, "ip")
    norm = scoring.code_norms(block, m)[:, None, :]
    ids = block["id"][:, None, :]

    def each(name: str) -> jax.Array:
        return queries[name][None, :, None]

    last = each("last_score")
    outside = (score < last) | ((score == last) & (ids > each("last_id")))
    member = (score >= each("lo")) & outside & (ids > each("cursor"))
    classes = queries["classes"]
    for c in range(classes.shape[1]):
        same = (ip == classes[None, :, c, 0, None]) & (norm == classes[None, :, c, 1, None])
        member = member & ~same
    return jnp.where(member, jnp.float32(0), topk.NEG_INF)


def band_scorer(m: int, kernel: str) -> Scorer:
    """The second pass's `Scorer` for codes of width m scanned with `kernel`."""
    return Scorer(
        ("band", m, kernel),
        functools.partial(band_scores, m=m, kernel=kernel),
        functools.partial(band_scores, m=m, kernel="popcount"),
        ids=True,
    )


def band_floor(low: np.ndarray) -> np.ndarray:
    """float32 lo with f + SCORE_TOLERANCE |f| < low for every float32 f < lo (low float64)."""
    tol = scoring.SCORE_TOLERANCE
    lo = np.where(low > 0, low / (1 + tol), low / (1 - tol))
    lo32 = lo.astype(np.float32)
    lo32 = np.where(lo32 > lo, np.nextafter(lo32, np.float32(-np.inf)), lo32)
    return np.nextafter(lo32, np.float32(-np.inf))  # room for the division's rounding


def shortlister(
    codes: Any,
    queries: dict[str, np.ndarray],
    scores: np.ndarray,
    ids: np.ndarray,
    k: int,
    u_q: int,
    *,
    exact_ints: ExactIntsFn,
    run: RunFn,
) -> Callable[[np.ndarray], list[np.ndarray | None]]:
    """The `shortlist` of `topk.exact_topk` for a `BinaryIndex`-like search.

    Args:
      codes: the `BinaryIndex` scanned (its m and kernel).
      queries: the searched queries (`BinaryIndex._queries`).
      scores: the float top K [Q, K] of the first pass.
      ids: their global ids, int64 [Q, K].
      k: results per query.
      u_q: the queries' loops.
      exact_ints: (query words [F, u_q+1, W], global ids [F]) -> (ip, norm) int64 [F].
      run: a search of the gallery with a `Scorer` (ids in the query dict global).
    """
    scorer = band_scorer(codes.m, codes._kernel())

    def shortlist(rows: np.ndarray) -> list[np.ndarray | None]:
        return _Band(queries, scores, ids, k, 2.0**-u_q, exact_ints, run, scorer).resolve(rows)

    return shortlist


class _Band:
    """The paged second pass for the rows of one search (see the module docstring)."""

    def __init__(self, queries, scores, ids, k, scale, exact_ints, run, scorer):
        self.queries, self.scores, self.ids, self.k = queries, scores, ids, k
        self.scale, self.exact_ints, self.run, self.scorer = scale, exact_ints, run, scorer

    def _classes(self, rows: np.ndarray, found: np.ndarray) -> list[list[tuple[int, int]]]:
        """(ip, norm) of each found document (int64 [len(rows), n]), as lists per row."""
        words = np.repeat(self.queries["words"][rows], found.shape[1], axis=0)
        ip, norm = self.exact_ints(words, found.ravel())
        pairs = np.stack([ip, norm], -1).reshape(len(rows), found.shape[1], 2)
        return [list(map(tuple, row.tolist())) for row in pairs]

    def resolve(self, rows: np.ndarray) -> list[np.ndarray | None]:
        """Each row's shortlist (ids ascending), or None after `ROUNDS` full pages."""
        k, width = self.k, self.scores.shape[1]
        held_classes = self._classes(rows, self.ids[rows])
        lows = np.empty(len(rows))
        for i, (row, classes) in enumerate(zip(rows, held_classes, strict=True)):
            ip, norm = np.array(classes, np.int64).T
            exact = topk.SdcScores(ip, norm, self.scale)
            kth = topk.exact_order(exact, self.ids[row], np.zeros(width, np.int64))[k - 1]
            lows[i] = exact.approx[kth] - exact.error[kth]
        params = {
            "lo": band_floor(lows),
            "last_score": self.scores[rows, -1].astype(np.float32),
            "last_id": self.ids[rows, -1].astype(np.int32),
            "cursor": np.full(len(rows), -1, np.int32),
        }
        counts = [Counter(classes) for classes in held_classes]
        found: list[list[np.ndarray]] = [[self.ids[row]] for row in rows]
        done: list[np.ndarray | None] = [None] * len(rows)
        pending = np.arange(len(rows))
        for _ in range(ROUNDS):
            left_out = [[c for c, n in counts[i].items() if n >= k] for i in pending]
            size = 1 << max(0, max(map(len, left_out)) - 1).bit_length()
            classes = np.array(
                [c + [_NO_CLASS] * (size - len(c)) for c in left_out], np.int32
            ).reshape(len(pending), size, 2)
            batch = {key: x[rows[pending]] for key, x in self.queries.items()}
            batch.update({key: x[pending] for key, x in params.items()}, classes=classes)
            got_scores, got_ids = self.run(batch, width + 1, self.scorer)
            full = []
            for i, row_scores, row_ids in zip(pending, got_scores, got_ids, strict=True):
                page = row_ids[row_scores == 0]
                if len(page) <= width:  # not a full page: every other band document
                    done[i] = np.unique(np.concatenate([*found[i], page]))
                else:
                    found[i].append(page[:width])
                    full.append(i)
            if not full:
                break
            pending = np.array(full)
            pages = np.stack([found[i][-1] for i in pending])
            for i, classes in zip(pending, self._classes(rows[pending], pages), strict=True):
                counts[i].update(classes)
            params["cursor"][pending] = pages[:, -1]
        return done
