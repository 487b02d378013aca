"""Recurrent binary codes as packed bits.

A code of width m with u loops is b = sum_{i=0..u} 2^-i s_i, with bit planes
s_i in {-1, +1}^m (what the binarizer returns as `planes` [N, u+1, m]).
Each plane is stored as bits t_i = (s_i < 0), 32 to a little-endian uint32
word: coordinate c of a plane is bit c % 32 of word c // 32. The last word
is padded with zero bits, which never count: two padded bits XOR to 0.
Beside the codes sits 1/||b|| per document, which SDC ranks with.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 32
MAX_QUERY_PLANES = 4  # a query of u_q <= 3 loops: exact integer scores in float32 (`scoring`)


def num_words(m: int) -> int:
    """uint32 words per plane of width m."""
    return -(-m // WORD_BITS)


def check_planes(planes: np.ndarray, m: int, u: int, name: str = "planes") -> np.ndarray:
    """Validates [N, u+1, m] int8 planes of +-1 and returns them as an array.

    Raises:
      ValueError: naming `name` and what is wrong (rank, shape, dtype, values).
    """
    planes = np.asarray(planes)
    if planes.ndim == 2 and u == 0:
        planes = planes[:, None, :]
    if planes.ndim != 3 or planes.shape[1:] != (u + 1, m):
        raise ValueError(
            f"{name} must have shape [N, {u + 1}, {m}] (u={u}, m={m}); got {list(planes.shape)}"
        )
    if planes.dtype != np.int8:
        raise ValueError(f"{name} must be int8 +-1 bit planes; got dtype {planes.dtype}")
    if planes.size and not np.all(np.abs(planes) == 1):
        raise ValueError(f"{name} must hold only -1 and +1")
    return planes


def pack(planes: np.ndarray) -> np.ndarray:
    """[N, P, m] +-1 planes -> [N, P, W] uint32 words (bit set where the sign is -1)."""
    n, p, m = planes.shape
    padded = np.zeros((n, p, num_words(m) * WORD_BITS), np.bool_)
    padded[..., :m] = planes < 0
    packed = np.packbits(padded, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u4").astype(np.uint32, copy=False)


def unpack(words: np.ndarray, m: int) -> np.ndarray:
    """[N, P, W] uint32 words -> [N, P, m] int8 planes of +-1."""
    as_bytes = np.ascontiguousarray(words.astype("<u4", copy=False)).view(np.uint8)
    bits = np.unpackbits(as_bytes, axis=-1, count=m, bitorder="little")
    return (1 - 2 * bits.astype(np.int8)).astype(np.int8)


def plane_weights(u: int) -> np.ndarray:
    """2^-i for planes i = 0..u."""
    return 2.0 ** -np.arange(u + 1)


def decode(planes: np.ndarray) -> np.ndarray:
    """The recurrent vectors b = sum_i 2^-i s_i, float32 [N, m] (exact)."""
    weights = plane_weights(planes.shape[1] - 1)
    return np.einsum("npm,p->nm", planes.astype(np.float32), weights.astype(np.float32))


def decode_int(planes: np.ndarray) -> np.ndarray:
    """2^u * b as int8 [N, m]: odd integers in +-(2^(u+1) - 1), exact for u <= 5."""
    u = planes.shape[1] - 1
    scale = (2 ** (u - np.arange(u + 1))).astype(np.int16)
    return np.einsum("npm,p->nm", planes.astype(np.int16), scale).astype(np.int8)


def inverse_norms(planes: np.ndarray) -> np.ndarray:
    """1/||b|| per code, float32 [N], computed in float64 from the exact integer norm."""
    scaled = decode_int(planes).astype(np.int64)
    u = planes.shape[1] - 1
    squared = np.einsum("nm,nm->n", scaled, scaled).astype(np.float64) / 4.0**u
    return (1.0 / np.sqrt(squared)).astype(np.float32)


def query_codes(query_planes: np.ndarray, m: int, metric: str) -> tuple[dict[str, np.ndarray], int]:
    """Query planes checked for an index of width m, as its search takes them.

    Args:
      query_planes: int8 [Q, u_q+1, m_q] of +-1 ([Q, m_q] is u_q = 0), u_q in
        0..3, m_q >= m (compared on the first m coordinates).
      m: the index's width.
      metric: the index's metric ("hamming" takes one-plane queries only).

    Returns:
      ({"words": packed planes [Q, u_q+1, W], "ints": 2^u_q b [Q, m] int8}, u_q).

    Raises:
      ValueError: naming the problem (shape, width, values, u for Hamming).
    """
    planes = np.asarray(query_planes)
    if planes.ndim == 2:
        planes = planes[:, None, :]
    if planes.ndim != 3 or not 1 <= planes.shape[1] <= MAX_QUERY_PLANES:
        raise ValueError(
            f"query_planes must have shape [Q, u+1, m] with u in 0..3; "
            f"got {list(np.shape(query_planes))}"
        )
    u_q, m_q = planes.shape[1] - 1, planes.shape[2]
    if m_q < m:
        raise ValueError(f"query_planes have width m={m_q}, narrower than the index's m={m}")
    if metric == "hamming" and u_q:
        raise ValueError(f"metric='hamming' needs one-plane queries (u=0); got u={u_q}")
    planes = check_planes(planes, m_q, u_q, "query_planes")[:, :, :m]
    return {"words": pack(planes), "ints": decode_int(planes)}, u_q
