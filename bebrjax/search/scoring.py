"""Scoring kernels over one block of a gallery, XLA-compiled.

A gallery block is tiled: each of the P = U+1 stored bit planes is its own
array [T, W, b] (T tiles of b documents, W uint32 words, documents last so
that the inner loop runs over contiguous documents), with 2^-U/||b|| as
[T, b]. Planes are separate arrays because slicing a plane axis inside the
scan's loop body measured 6-9x slower on XLA:CPU. Every kernel returns
scores [T, Q, b] to maximize: the tile axis leads so that a tile is reused
by all Q queries while it sits in cache (measured 1.3-2x faster on XLA:CPU
than query-major at 1024 bits).

Symmetric distance calculation (SDC): for a query code of u_q loops and a
document code of u_d loops, b = sum_i 2^-i s_i,

    2^(u_q+U) <b_q, b_d> = sum_{i,j} 2^(u_q-i) c_j (m - 2 popcount(t_q,i XOR t_d,j)),

with c_j = 2^(U-j) for the document's planes j <= u_d and c_j = 0 for the
planes it lacks (stored as zero words), is an exact integer. When every
document of a block has U loops the c_j are constants; otherwise the block
carries its documents' loops ("loops" [T, b]) and c_j is selected per
document. The score is <b_q, b_d> / ||b_d|| (the query's norm does not
change the ranking). Two kernels compute the integer:
  * `popcount`: (u_q+1)(U+1) xor-popcount passes, accumulated in uint16
    (the vectorized form on CPU);
  * `matmul`: the block is unpacked to sum_j c_j s_j as int8 and multiplied
    by the queries' 2^u_q b_q with int32 accumulation (the tensor-core/MXU
    form).
Both give the same integer, then the same float32 multiply by the block's
2^-U/||b_d|| times 2^-u_q (a power of two, so exact): identical scores, and
for u_q = U the same bits as a one-version index. Hamming (u_q = U = 0)
scores are minus the distance.

An "ip" score f is a rounding of the exact score S = ip / (2^u_q sqrt(n)),
n = ||2^U b_d||^2 an integer: |f - S| <= SCORE_TOLERANCE |f| (see there), so
two documents of equal cosine may get floats an ulp apart. `exact_ints`
computes (ip, n) on the host, by popcount in numpy, for the exact ranking
of `bebrjax.search.topk.exact_topk`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

KERNELS = ("popcount", "unrolled", "swar", "csa", "matmul")

SCORE_TOLERANCE = 2.0**-22
"""|f - S| <= SCORE_TOLERANCE |f| for an "ip" score f of `code_scores` and its exact value S.

Why: |ip| <= m (2^(u_q+1) - 1)(2^(U+1) - 1) < 2^24 (m <= 65535, u_q, U <= 3), so
float32 holds ip exactly; the block's scale is 1/||b_d||, correctly rounded
in float64 from the exact integer norm and then rounded to float32 (relative
error below 2^-24 + 2^-51), times powers of two (exact, far from underflow);
the product rounds once more (2^-24). So f = S (1 + e) with |e| < 2^-22.9,
and |f - S| < 2^-22.8 |f|.
"""


def sdc_bound(scores: np.ndarray) -> np.ndarray:
    """The bound on |f - S| of "ip" scores f (`SCORE_TOLERANCE` |f|), float64."""
    return SCORE_TOLERANCE * np.abs(np.asarray(scores, np.float64))


_POPCOUNT = np.array([bin(byte).count("1") for byte in range(256)], np.uint8)
_CHUNK = 1 << 16  # pairs per numpy pass of `exact_ints`


def _doc_weights(num_planes: int, loops: jax.Array | None) -> list[int | jax.Array]:
    """c_j for stored planes j = 0..P-1: 2^(P-1-j), or 0 past a document's loops.

    Args:
      num_planes: P, the stored planes (U+1).
      loops: None when every document has U loops (constant weights), else
        each document's loops [T, b] (int32 weights [T, b] for planes j >= 1).
    """
    u = num_planes - 1
    if loops is None:
        return [2 ** (u - j) for j in range(num_planes)]
    return [2**u] + [
        jnp.where(loops >= j, jnp.int32(2 ** (u - j)), jnp.int32(0)) for j in range(1, num_planes)
    ]


def _per_doc(weight: int | jax.Array, dtype: jnp.dtype) -> int | jax.Array:
    """A plane weight broadcastable against [T, X, b]: constants stay Python ints."""
    return weight if isinstance(weight, int) else weight[:, None, :].astype(dtype)


def _reduced_count(q: jax.Array, d: jax.Array) -> jax.Array:
    """sum_w popcount(q_w XOR d_w) as one reduction over the words: q [Q, W], d [T, W, b]."""
    xor = q[None, :, :, None] ^ d[:, None, :, :]
    return jnp.sum(lax.population_count(xor), axis=2, dtype=jnp.uint16).astype(jnp.int32)


def _unrolled_count(q: jax.Array, d: jax.Array) -> jax.Array:
    """The same sum written out word by word: one elementwise loop over [T, Q, b]."""
    total = None
    for w in range(q.shape[1]):
        count = lax.population_count(q[None, :, w, None] ^ d[:, None, w, :])
        total = count if total is None else total + count
    return total.astype(jnp.int32)


def _swar_count(q: jax.Array, d: jax.Array) -> jax.Array:
    """The same sum by bit-parallel adds within each word (SWAR), with no popcount.

    Two bit-pair steps leave 4-bit counts (<= 4) in each word; two words'
    counts are added per nibble (<= 8), folded to bytes (<= 16) and summed
    over up to 30 words per byte (<= 240) before the bytes are folded to one
    count. On a CPU without a vector popcount this takes fewer operations
    per word than emulating one.
    """
    u32 = jnp.uint32

    def nibbles(w: int) -> jax.Array:
        x = q[None, :, w, None] ^ d[:, None, w, :]
        x = x - ((x >> 1) & u32(0x55555555))
        return (x & u32(0x33333333)) + ((x >> 2) & u32(0x33333333))

    total = None
    num_words = q.shape[1]
    for start in range(0, num_words, 30):
        acc = None
        for w in range(start, min(num_words, start + 30), 2):
            pair = nibbles(w) if w + 1 >= num_words else nibbles(w) + nibbles(w + 1)
            pair = (pair & u32(0x0F0F0F0F)) + ((pair >> 4) & u32(0x0F0F0F0F))
            acc = pair if acc is None else acc + pair
        acc = (acc & u32(0x00FF00FF)) + ((acc >> 8) & u32(0x00FF00FF))
        count = ((acc & u32(0xFFFF)) + (acc >> 16)).astype(jnp.int32)
        total = count if total is None else total + count
    return total


def weighted_count(words: list[tuple[int, jax.Array]]) -> jax.Array:
    """sum_n c_n popcount(x_n) of weighted words by carry-save adders (Harley-Seal).

    Words of one weight c are added three at a time, bitwise, as a full
    adder does: a XOR b XOR c keeps weight c and the carry (majority) goes to
    weight 2c, so every 5 bitwise operations retire one word, and only the
    one or two words left per weight are popcounted. On a CPU without a
    vector popcount this is far fewer operations than a popcount per word.

    Args:
      words: (weight, uint32 array) pairs, arrays of one shape; weights are
        powers of two.

    Returns:
      int32, the arrays' shape.
    """
    by_weight: dict[int, list[jax.Array]] = {}
    for weight, x in words:
        by_weight.setdefault(weight, []).append(x)
    total = None
    while by_weight:
        weight = min(by_weight)
        pending = by_weight.pop(weight)
        while len(pending) >= 3:
            a, b, c = pending.pop(0), pending.pop(0), pending.pop(0)
            half = a ^ b
            pending.append(half ^ c)
            by_weight.setdefault(2 * weight, []).append((a & b) | (half & c))
        for x in pending:
            count = weight * lax.population_count(x).astype(jnp.int32)
            total = count if total is None else total + count
    return total


def _csa_count(q: jax.Array, d: jax.Array) -> jax.Array:
    """The same sum by carry-save adders over the words (`weighted_count`)."""
    return weighted_count([(1, q[None, :, w, None] ^ d[:, None, w, :]) for w in range(q.shape[1])])


COUNTS = {
    "popcount": _reduced_count,
    "unrolled": _unrolled_count,
    "swar": _swar_count,
    "csa": _csa_count,
}
"""The xor-popcount kernels: each sums popcount(q XOR d) over a plane's words, identically."""


def popcount_ip(
    q_words: jax.Array,
    planes: list[jax.Array],
    m: int,
    loops: jax.Array | None = None,
    kernel: str = "popcount",
) -> jax.Array:
    """2^(u_q+U) <b_q, b_d> by xor-popcount.

    Args:
      q_words: queries' packed planes [Q, u_q+1, W] uint32.
      planes: the block's P = U+1 planes, each [T, W, b] uint32.
      m: code width.
      loops: the documents' loops [T, b], or None when all have U.
      kernel: how each plane pair's popcount is summed, a key of `COUNTS`.

    Returns:
      int32 [T, Q, b].
    """
    u_q = q_words.shape[1] - 1
    weights = _doc_weights(len(planes), loops)
    if kernel == "csa" and loops is None:  # constant weights: one adder tree for every pass
        words = [
            (2 ** (u_q - i) * c, q_words[None, :, i, w, None] ^ d[:, None, w, :])
            for i in range(u_q + 1)
            for c, d in zip(weights, planes, strict=True)
            for w in range(q_words.shape[2])
        ]
        return m * sum(c for c, _ in words) // q_words.shape[2] - 2 * weighted_count(words)
    count = COUNTS[kernel]
    total = None
    for i in range(u_q + 1):
        for j, c in enumerate(weights):
            pc = count(q_words[:, i, :], planes[j])
            term = _per_doc(2 ** (u_q - i) * c, jnp.int32) * (m - 2 * pc)
            total = term if total is None else total + term
    return total


def unpack_block(planes: list[jax.Array], m: int, loops: jax.Array | None = None) -> jax.Array:
    """Packed planes P x [T, W, b] -> sum_j c_j s_j as int8 [T, m, b] (2^U b without loops)."""
    shifts = jnp.arange(32, dtype=jnp.uint32)[None, None, :, None]
    total = None
    for words, c in zip(planes, _doc_weights(len(planes), loops), strict=True):
        tiles, num_words, b = words.shape
        bits = ((words[:, :, None, :] >> shifts) & 1).reshape(tiles, num_words * 32, b)[:, :m]
        weight = jnp.int8(c) if isinstance(c, int) else _per_doc(c, jnp.int8)
        signs = (1 - 2 * bits.astype(jnp.int8)) * weight
        total = signs if total is None else total + signs
    return total


def matmul_ip(
    q_int: jax.Array, planes: list[jax.Array], m: int, loops: jax.Array | None = None
) -> jax.Array:
    """2^(u_q+U) <b_q, b_d> as an int8 product: q_int [Q, m] (2^u_q b_q) -> int32 [T, Q, b].

    `planes` and `loops` as for `popcount_ip`.
    """
    return jnp.einsum(
        "qm,tmb->tqb", q_int, unpack_block(planes, m, loops), preferred_element_type=jnp.int32
    )


def code_ip(
    queries: dict[str, jax.Array], block: dict[str, jax.Array], *, m: int, kernel: str
) -> jax.Array:
    """2^(u_q+U) <b_q, b_d> of packed queries against one block, int32 [T, Q, b].

    Args as for `code_scores` ("ints" is needed by the matmul kernel only).
    """
    loops = block.get("loops")
    if kernel == "matmul":
        return matmul_ip(queries["ints"], block["planes"], m, loops)
    return popcount_ip(queries["words"], block["planes"], m, loops, kernel)


def code_scores(
    queries: dict[str, jax.Array],
    block: dict[str, jax.Array],
    *,
    m: int,
    metric: str,
    kernel: str,
) -> jax.Array:
    """Scores to maximize of packed queries against one block, float32 [T, Q, b].

    Args:
      queries: {"words": [Q, u_q+1, W] uint32, "ints": [Q, m] int8 (2^u_q b_q)}.
      block: {"planes": P x [T, W, b] uint32, "scale": [T, b] float32 = 2^-U / ||b_d||,
        and "loops": [T, b] the documents' loops when some have fewer than U}.
      m: code width.
      metric: "ip" (SDC, <b_q, b_d> / ||b_d||) or "hamming" (minus the distance, u_q = U = 0).
      kernel: "popcount" or "matmul".
    """
    return ip_scores(code_ip(queries, block, m=m, kernel=kernel), queries, block, m, metric)


def ip_scores(
    ip: jax.Array, queries: dict[str, jax.Array], block: dict[str, jax.Array], m: int, metric: str
) -> jax.Array:
    """`code_scores` from its integers `code_ip` [T, Q, b]: the float32 scores to maximize."""
    if metric == "hamming":
        return -((m - ip) // 2).astype(jnp.float32)
    u_q = queries["words"].shape[1] - 1
    scale = block["scale"] * jnp.float32(2.0**-u_q)  # a power of two: exact
    return ip.astype(jnp.float32) * scale[:, None, :]


def code_norms(block: dict[str, jax.Array], m: int) -> jax.Array:
    """||2^U b_d||^2 of a block's documents, exactly (the `exact_ints` norm): int32 [T, b].

    Args:
      block: as for `code_scores` (its "planes" and optional "loops").
      m: code width.
    """
    planes = block["planes"]
    weights = _doc_weights(len(planes), block.get("loops"))
    norm = sum(m * c * c for c in weights)
    for i in range(len(planes)):
        for j in range(i + 1, len(planes)):
            count = jnp.sum(lax.population_count(planes[i] ^ planes[j]), axis=1, dtype=jnp.int32)
            norm = norm + 2 * weights[i] * weights[j] * (m - 2 * count)
    return jnp.broadcast_to(norm, planes[0][:, 0].shape).astype(jnp.int32)


def float_scores(queries: dict[str, jax.Array], block: dict[str, jax.Array]) -> jax.Array:
    """Exact float inner products: {"x": [Q, d]} against {"x": [T, d, b]} -> [T, Q, b]."""
    return jnp.einsum("qd,tdb->tqb", queries["x"], block["x"], precision=lax.Precision.HIGHEST)


def _sign_dots(x: np.ndarray, y: np.ndarray, m: int) -> np.ndarray:
    """<s, s'> = m - 2 popcount(t XOR t') of packed planes [..., W] uint32, as int64 [...]."""
    xor = np.ascontiguousarray(x ^ y)
    return m - 2 * _POPCOUNT[xor.view(np.uint8)].sum(-1, dtype=np.int64)


def _exact_chunk(
    q_words: np.ndarray, doc_words: np.ndarray, doc_loops: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """`exact_ints` of one chunk of documents."""
    u_q, u = q_words.shape[-2] - 1, doc_words.shape[1] - 1
    weights = [np.where(doc_loops >= j, 2 ** (u - j), 0).astype(np.int64) for j in range(u + 1)]
    ip = sum(
        2 ** (u_q - i) * c * _sign_dots(q_words[..., i, :], doc_words[:, j], m)
        for i in range(u_q + 1)
        for j, c in enumerate(weights)
    )
    norm = sum(m * c * c for c in weights) + sum(
        2 * weights[i] * weights[j] * _sign_dots(doc_words[:, i], doc_words[:, j], m)
        for i in range(u + 1)
        for j in range(i + 1, u + 1)
    )
    return ip, norm


def exact_ints(
    q_words: np.ndarray, doc_words: np.ndarray, doc_loops: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """The integers behind "ip" scores, computed exactly on the host (numpy).

    Args:
      q_words: packed query planes, [F, u_q+1, W] uint32 (one query per
        document) or [u_q+1, W] (one query for every document).
      doc_words: the documents' stored planes [F, U+1, W] uint32 (zero words
        past a document's loops).
      doc_loops: each document's loops [F].
      m: code width.

    Returns:
      (ip, norm) int64 [F]: 2^(u_q+U) <b_q, b_d> and ||2^U b_d||^2, so that
      the exact score is ip / (2^u_q sqrt(norm)).
    """
    parts = [
        _exact_chunk(
            q_words if q_words.ndim == 2 else q_words[start : start + _CHUNK],
            np.asarray(doc_words[start : start + _CHUNK]),
            doc_loops[start : start + _CHUNK],
            m,
        )
        for start in range(0, len(doc_words), _CHUNK)
    ]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
