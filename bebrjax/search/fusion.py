"""Version-aware search: each document scored by several query models' codes, calibrated, fused.

A query is encoded at search time, by any model that still exists: during an
upgrade the old model does. So a mixed-version index can be searched with
one query code per *query model*, each document scored by every model
declared able to score its version:

    fusion = Fusion(models=("old", "new"), versions=("old", "new"),
                    alpha=[[a_oo, 0.0], [a_no, a_nn]], beta=[b_o, b_n])
    scores, ids = search_fused(index, {"old": old_query_planes, "new": new_query_planes},
                               fusion, k=10)

`bebrjax.search.plan.ScoringPlan` fits alpha and beta on training pairs
(affine calibrations and fusion weights folded together) and stores them.

The score. For query r, model q's code b_q (u_q loops) and document d of
version v (stored code b_d, U the index's largest loops):

    S(r, d) = beta_v + s_d * sum_q c_{r,q,v} * ip_q(r, d)

with ip_q = 2^(u_q+U) <b_q, b_d> the exact integer of cross-u SDC
(`bebrjax.search.scoring`), s_d = 2^-U / ||b_d|| as the index stores it
(float32 1/||b_d||, times a power of two) and c_{r,q,v} = alpha_{q,v} /
||2^u_q b_q||, rounded to float64. So alpha_{q,v} multiplies the cosine of
the two codes (up to the rounding of the stored norm), a model with
alpha_{q,v} = 0 does not score version v, and S is a rational function of
exact integers and stored constants: the ranking is exact in S, ties to the
lower id, as `BinaryIndex.search` is in SDC.

How it stays exact. The device computes f = fl32(beta_v + s_d fl32(sum_q
c_q ip_q)) with float32 c and beta. Each |s_d c_q ip_q| <= |alpha_{q,v}|
(1 + 2^-22) (a cosine), ip_q is exact in float32 (< 2^24), and the n <= 8
products, n - 1 sums, the scale, beta's rounding and the last addition
each err by at most 2^-24 of |beta_v| + sum_q |alpha_{q,v}|, so
|f - S| <= (n + 3) 2^-24 (...) < 2^-19 M with M = max_v (|beta_v| +
sum_q |alpha_{q,v}|), one bound per plan. `topk.exact_topk` certifies the
device's float top k + SPARE with that bound and orders near ties by S
itself (float64 first, then `fractions.Fraction`), as it does for SDC.

Works on both kernels, on a mesh, with versions of different u (cross-u
SDC), and over processes (`ShardedIndex`). An `IVFIndex` is not searched
this way: its lists were built from one code per document and are probed
by one query code, so several query models have no single probe order;
its directory opens as a `BinaryIndex` for an exhaustive version-aware
search.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from bebrjax.search import codes as codes_lib
from bebrjax.search import scoring, topk
from bebrjax.search.blocked import Scorer
from bebrjax.search.index import BinaryIndex
from bebrjax.search.sharded import ShardedIndex

MAX_MODELS = 8  # the error bound below counts on at most this many query models
_DEVICE_BOUND = 2.0**-19  # |f - S| <= this x M on the device (float32)
_HOST_BOUND = 2.0**-48  # |approx - S| <= this x M on the host (float64)


@dataclasses.dataclass(frozen=True)
class Fusion:
    """How query models score document versions: S = beta_v + sum_q alpha_{q,v} cos_q.

    Attributes:
      models: the query models' names, in the order of alpha's rows.
      versions: the document versions' names, in the order of its columns.
      alpha: float64 [models, versions]; 0 where model q does not score v.
      beta: float64 [versions].
    """

    models: tuple[str, ...]
    versions: tuple[str, ...]
    alpha: np.ndarray
    beta: np.ndarray

    def __post_init__(self):
        alpha = np.asarray(self.alpha, np.float64)
        beta = np.asarray(self.beta, np.float64)
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "versions", tuple(self.versions))
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "beta", beta)
        if not 1 <= len(self.models) <= MAX_MODELS or len(set(self.models)) != len(self.models):
            raise ValueError(f"models {list(self.models)}: 1 to {MAX_MODELS} distinct names")
        if len(set(self.versions)) != len(self.versions) or not self.versions:
            raise ValueError(f"versions {list(self.versions)}: distinct names, at least one")
        if alpha.shape != (len(self.models), len(self.versions)) or beta.shape != (
            len(self.versions),
        ):
            raise ValueError(
                f"alpha {list(alpha.shape)} and beta {list(beta.shape)} must be "
                f"[{len(self.models)}, {len(self.versions)}] and [{len(self.versions)}]"
            )
        if not (np.isfinite(alpha).all() and np.isfinite(beta).all()):
            raise ValueError("alpha and beta must be finite")

    def aligned(
        self, index_versions: Sequence[str], who: str = "the scoring"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(alpha [models, V], beta [V]) in the order of an index's versions.

        Raises:
          ValueError: when the fusion (`who`, for the message) names a version
            the index lacks, or an index version is scored by no query model.
        """
        missing = [v for v in self.versions if v not in index_versions]
        if missing:
            raise ValueError(
                f"{who} names version(s) {missing} that the index lacks "
                f"(it holds {list(index_versions)})"
            )
        unscored = [v for v in index_versions if v not in self.versions]
        unscored += [v for v in self.versions if not self.alpha[:, self.versions.index(v)].any()]
        if unscored:
            raise ValueError(
                f"index version(s) {unscored} are scored by no query model of {who} "
                f"(it scores {[v for v in self.versions if v not in unscored]})"
            )
        cols = [self.versions.index(v) for v in index_versions]
        return self.alpha[:, cols], self.beta[cols]


def _per_version(x: jax.Array, version: jax.Array | None) -> jax.Array:
    """Per-version values x [Q, V] per document: [T, Q, b] by version ([T, b]), or [1, Q, 1]."""
    out = x[None, :, 0, None]
    if version is None:
        return out
    for v in range(1, x.shape[1]):
        out = jnp.where(version[:, None, :] == v, x[None, :, v, None], out)
    return out


def fused_scores(queries: dict, block: dict, *, m: int, kernel: str, models: int) -> jax.Array:
    """Fused scores beta_v + s_d sum_q c_q ip_q of packed queries vs one block, f32 [T, Q, b].

    Args:
      queries: "words{q}" [Q, u_q+1, W] and "ints{q}" [Q, m] per model q,
        "coef" [Q, models, V] float32 (c_{r,q,v}) and "beta" [Q, V].
      block: as for `scoring.code_scores`, plus "version" [T, b] when the
        index holds several versions.
      m: code width.
      kernel: the ip kernel (`scoring.KERNELS`).
      models: how many query models.
    """
    version = block.get("version")
    total = None
    for q in range(models):
        codes = {"words": queries[f"words{q}"], "ints": queries[f"ints{q}"]}
        ip = scoring.code_ip(codes, block, m=m, kernel=kernel).astype(jnp.float32)
        term = _per_version(queries["coef"][:, q], version) * ip
        total = term if total is None else total + term
    return _per_version(queries["beta"], version) + block["scale"][:, None, :] * total


class FusedScores:
    """Exact fused scores S of (query, document) pairs for `topk.exact_topk`.

    Args:
      coef: float64 [F, models] c_{r,q,v} of each pair (its query and version).
      beta: float64 [F] beta_v of each pair.
      ip: int64 [models, F].
      norm: int64 [F], ||2^U b_d||^2.
      u: the index's U.
      bound: the bound on |approx - S| (one number).
      version: [F] each document's version (for `ties`).
    """

    def __init__(self, coef, beta, ip, norm, u, bound, version):
        self.coef, self.beta, self.ip, self.version = coef, beta, ip, version
        # 1/||b_d|| as `codes.inverse_norms` stores it: the same float64 operations on the
        # same real ||b_d||^2 = norm / 4^U (exact in float64), then float32.
        inv = (1.0 / np.sqrt(norm / 4.0**u)).astype(np.float32)
        self.scale = inv.astype(np.float64) * 2.0**-u  # s_d, exactly
        self.approx = beta + self.scale * np.einsum("fq,qf->f", coef, ip.astype(np.float64))
        self.error = np.full(len(beta), bound)

    def key(self, i: int) -> Fraction:
        """S_i exactly."""
        total = sum(
            Fraction(float(c)) * int(x) for c, x in zip(self.coef[i], self.ip[:, i], strict=True)
        )
        return Fraction(float(self.beta[i])) + Fraction(float(self.scale[i])) * total

    def ties(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Same query (within a segment), version, integers and norm: the same S."""
        same = (self.version[a] == self.version[b]) & (self.scale[a] == self.scale[b])
        same &= (self.ip[:, a] == self.ip[:, b]).all(0)
        return same & (self.coef[a] == self.coef[b]).all(1)


def _gallery(index: BinaryIndex | ShardedIndex):
    """(local BinaryIndex, candidates(queries, width, scorer), exact_ints, versions_of)."""
    if isinstance(index, ShardedIndex):
        return index.local, index._candidates, index.exact_ints, index.versions_of
    if not isinstance(index, BinaryIndex):
        raise ValueError(
            f"version-aware search takes a BinaryIndex or ShardedIndex; got "
            f"{type(index).__name__} (an IVF index's lists are probed by one query code; "
            "open its directory with BinaryIndex.load for an exhaustive search)"
        )
    doc_versions = index.doc_versions
    return index, index._search, index.exact_ints, lambda ids: doc_versions[ids]


def search_fused(
    index: BinaryIndex | ShardedIndex,
    queries: Mapping[str, np.ndarray],
    fusion: Fusion,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top k of each query under the fused score S (see the module docstring).

    Args:
      index: the documents, of any versions the fusion scores.
      queries: model name -> int8 query planes [Q, u_q+1, m_q] (m_q >= the
        index's m, compared on the first m coordinates), one entry per
        model of the fusion, row r of each the same query.
      fusion: which model scores which version, with what weights.
      k: results per query, 1 <= k <= ntotal.

    Returns:
      (scores float32 [Q, k] descending, ids int64 [Q, k]), ties to the lower id.

    Raises:
      ValueError: naming the problem (a model without queries or queries of
        no model, query counts that differ, a version the index lacks or
        one no model scores, planes of another shape).
    """
    local, candidates, exact_ints, versions_of = _gallery(index)
    given, wanted = set(queries), set(fusion.models)
    if given != wanted:
        raise ValueError(
            f"the scoring's query models are {sorted(wanted)}; queries were given for "
            f"{sorted(given)} (missing: {sorted(wanted - given)}, "
            f"unknown: {sorted(given - wanted)})"
        )
    alpha, beta = fusion.aligned(list(local.versions))
    active = [q for q in range(len(fusion.models)) if alpha[q].any()]
    packed = []
    for q in active:
        name = fusion.models[q]
        try:
            codes, _ = codes_lib.query_codes(queries[name], local.m, "ip")
        except ValueError as e:
            raise ValueError(f"queries of model {name!r}: {e}") from None
        packed.append(codes)
    counts = {fusion.models[q]: len(c["words"]) for q, c in zip(active, packed, strict=True)}
    if len(set(counts.values())) > 1:
        raise ValueError(f"every query model needs the same queries; counts: {counts}")
    if not isinstance(k, int | np.integer) or not 1 <= k <= index.ntotal:
        raise ValueError(f"k={k} must be an integer in [1, {index.ntotal}] (the index size)")
    norms = np.stack([np.linalg.norm(c["ints"].astype(np.float64), axis=1) for c in packed], 1)
    coef = alpha[active][None] / norms[:, :, None]  # [Q, models, V] float64
    flat = {f"{key}{q}": c[key] for q, c in enumerate(packed) for key in ("words", "ints")}
    flat["coef"] = coef.astype(np.float32)
    flat["beta"] = np.broadcast_to(beta.astype(np.float32), (len(coef), len(beta))).copy()
    size = np.abs(alpha[active]).sum(0) + np.abs(beta)
    scale_of_bounds = float(size.max())
    width = min(index.ntotal, k + topk.SPARE)
    kernel = local._kernel()

    def score(kernel_name):
        return lambda q, block: fused_scores(
            q, block, m=local.m, kernel=kernel_name, models=len(active)
        )

    scorer = Scorer(("fused", local.m, kernel, len(active)), score(kernel), score("popcount"))
    scores, ids = candidates(flat, width, scorer)

    def exact(rows: np.ndarray | int, docs: np.ndarray | None) -> FusedScores:
        """Exact scores of queries `rows` against `docs` (one query: every document)."""
        version = versions_of(np.arange(index.ntotal) if docs is None else docs)
        ips, norm = [], None
        for c in packed:
            ip, norm = exact_ints(c["words"][rows], docs)
            ips.append(ip)
        return FusedScores(
            coef[rows, :, version] if docs is not None else coef[rows][:, version].T,
            beta[version],
            np.stack(ips),
            norm,
            local.u,
            _HOST_BOUND * scale_of_bounds,
            version,
        )

    return topk.exact_topk(
        scores,
        ids,
        k,
        bound=np.full(scores.shape, _DEVICE_BOUND * scale_of_bounds),
        complete=width == index.ntotal,
        exact=exact,
        exact_all=lambda row: (exact(row, None), np.arange(index.ntotal)),
    )
