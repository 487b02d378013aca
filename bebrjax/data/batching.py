"""Deterministic batches: the rows of step t depend only on (seed, t).

Each epoch is a fresh permutation of the rows drawn from (seed, epoch), cut
into full batches (the remainder is dropped). Because nothing else carries
state, a run resumed from a checkpoint at step t sees exactly the batches an
uninterrupted run would, and every process computes the same batch.

The permutation is never materialized: it is a keyed Feistel network over
[0, 4^h) (the smallest such range holding N), restricted to [0, N) by cycle
walking, and evaluated only at the batch's positions. A step costs
O(batch), not O(N) (a drawn permutation of 10M rows took about a second
per step), and no epoch's order is held in memory.
"""

from __future__ import annotations

import numpy as np

from bebrjax.errors import ConfigError

_ROUNDS = 8
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch; raises ConfigError when not even one fits."""
    if batch_size <= 0 or batch_size > num_examples:
        raise ConfigError(
            f"config key 'train.batch_size' = {batch_size}: must be in [1, {num_examples}] "
            "(the number of training examples)"
        )
    return num_examples // batch_size


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective scramble of uint64 values."""
    x = (x ^ (x >> np.uint64(30))) * _MIX[0]
    x = (x ^ (x >> np.uint64(27))) * _MIX[1]
    return x ^ (x >> np.uint64(31))


def permuted(positions: np.ndarray, num_examples: int, key: tuple[int, ...]) -> np.ndarray:
    """Entries `positions` of the permutation of [0, num_examples) drawn from `key`.

    Args:
      positions: int positions in [0, num_examples).
      num_examples: N, the length of the permutation.
      key: its seed (e.g. (seed, epoch)).

    Returns:
      int64 rows, distinct for distinct positions; all N positions give every
      row once.
    """
    half = max(1, -(-(num_examples - 1).bit_length() // 2))
    shift, mask = np.uint64(half), np.uint64((1 << half) - 1)
    keys = np.random.default_rng(key).integers(2**64, size=_ROUNDS, dtype=np.uint64)

    def feistel(x):
        left, right = x >> shift, x & mask
        for k in keys:
            left, right = right, left ^ (_mix(right ^ k) & mask)
        return (left << shift) | right

    rows = feistel(np.asarray(positions, np.uint64))
    outside = np.flatnonzero(rows >= num_examples)
    while outside.size:  # cycle walking: a permutation of [0, 4^h) restricted to [0, N)
        rows[outside] = feistel(rows[outside])
        outside = outside[rows[outside] >= num_examples]
    return rows.astype(np.int64)


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """The row indices of the batch at `step`: its slice of its epoch's permutation."""
    per_epoch = steps_per_epoch(num_examples, batch_size)
    epoch, index = divmod(step, per_epoch)
    positions = np.arange(index * batch_size, (index + 1) * batch_size)
    return permuted(positions, num_examples, (seed, epoch))


def total_steps(train, num_examples: int) -> int:
    """The steps of a run: `train.steps`, or `train.epochs` epochs of full batches when 0."""
    if train.steps:
        return train.steps
    return max(1, int(round(train.epochs * steps_per_epoch(num_examples, train.batch_size))))
