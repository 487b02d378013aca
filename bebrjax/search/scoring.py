"""Scoring kernels over one block of a gallery, XLA-compiled.

A gallery block is tiled: each of the P = u+1 bit planes is its own array
[T, W, b] (T tiles of b documents, W uint32 words, documents last so that
the inner loop runs over contiguous documents), with 4^-u/||b|| as [T, b].
Planes are separate arrays because slicing a plane axis inside the scan's
loop body measured 6-9x slower on XLA:CPU. Every kernel returns
scores [T, Q, b] to maximize: the tile axis leads so that a tile is reused
by all Q queries while it sits in cache (measured 1.3-2x faster on XLA:CPU
than query-major at 1024 bits).

Symmetric distance calculation (SDC): for codes b = sum_i 2^-i s_i,

    4^u <b_q, b_d> = sum_{i,j} 2^(2u-i-j) (m - 2 popcount(t_q,i XOR t_d,j))

is an exact integer; the score is <b_q, b_d> / ||b_d|| (the query's norm
does not change the ranking). Two kernels compute it:
  * `popcount`: (u+1)^2 xor-popcount passes, accumulated in uint16 (the
    vectorized form on CPU);
  * `matmul`: the block is unpacked to 2^u b as int8 and multiplied by the
    queries' 2^u b with int32 accumulation (the tensor-core/MXU form).
Both give the same integer, then the same float32 multiply: identical scores.
Hamming (u = 0) scores are minus the distance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

KERNELS = ("popcount", "matmul")


def resolve_kernel(kernel: str) -> str:
    """`auto` is popcount on CPU and matmul on GPU/TPU; other names pass through."""
    if kernel == "auto":
        return "popcount" if jax.default_backend() == "cpu" else "matmul"
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: expected 'auto' or one of {', '.join(KERNELS)}")
    return kernel


def _pair_weights(u: int) -> list[tuple[int, int, int]]:
    """(i, j, 2^(2u-i-j)) for every plane pair."""
    return [(i, j, 2 ** (2 * u - i - j)) for i in range(u + 1) for j in range(u + 1)]


def popcount_ip(q_words: jax.Array, planes: list[jax.Array], m: int) -> jax.Array:
    """4^u <b_q, b_d> by xor-popcount: q [Q, P, W], planes P x [T, W, b] -> int32 [T, Q, b]."""
    u = q_words.shape[1] - 1
    total = None
    for i, j, weight in _pair_weights(u):
        pc = jnp.sum(
            lax.population_count(q_words[None, :, i, :, None] ^ planes[j][:, None, :, :]),
            axis=2,
            dtype=jnp.uint16,
        )
        term = weight * (m - 2 * pc.astype(jnp.int32))
        total = term if total is None else total + term
    return total


def unpack_block(planes: list[jax.Array], m: int) -> jax.Array:
    """Packed planes P x [T, W, b] -> 2^u b as int8 [T, m, b]."""
    shifts = jnp.arange(32, dtype=jnp.uint32)[None, None, :, None]
    total = None
    for i, words in enumerate(planes):
        tiles, num_words, b = words.shape
        bits = ((words[:, :, None, :] >> shifts) & 1).reshape(tiles, num_words * 32, b)[:, :m]
        signs = (1 - 2 * bits.astype(jnp.int8)) * jnp.int8(2 ** (len(planes) - 1 - i))
        total = signs if total is None else total + signs
    return total


def matmul_ip(q_int: jax.Array, planes: list[jax.Array], m: int) -> jax.Array:
    """4^u <b_q, b_d> as an int8 product: q_int [Q, m] (2^u b_q) -> int32 [T, Q, b]."""
    return jnp.einsum(
        "qm,tmb->tqb", q_int, unpack_block(planes, m), preferred_element_type=jnp.int32
    )


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
      queries: {"words": [Q, P, W] uint32, "ints": [Q, m] int8 (2^u b)}.
      block: {"planes": P x [T, W, b] uint32, "scale": [T, b] float32 = 4^-u / ||b_d||}.
      m: code width.
      metric: "ip" (SDC, <b_q, b_d> / ||b_d||) or "hamming" (minus the distance, u = 0).
      kernel: "popcount" or "matmul".
    """
    if kernel == "popcount":
        ip = popcount_ip(queries["words"], block["planes"], m)
    else:
        ip = matmul_ip(queries["ints"], block["planes"], m)
    if metric == "hamming":
        return -((m - ip) // 2).astype(jnp.float32)
    return ip.astype(jnp.float32) * block["scale"][:, None, :]


def float_scores(queries: dict[str, jax.Array], block: dict[str, jax.Array]) -> jax.Array:
    """Exact float inner products: {"x": [Q, d]} against {"x": [T, d, b]} -> [T, Q, b]."""
    return jnp.einsum("qd,tdb->tqb", queries["x"], block["x"], precision=lax.Precision.HIGHEST)
