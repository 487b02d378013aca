"""Deterministic batches: the rows of step t depend only on (seed, t).

Each epoch is a fresh permutation drawn from (seed, epoch), cut into full
batches (the remainder is dropped). Because nothing else carries state, a run
resumed from a checkpoint at step t sees exactly the batches an uninterrupted
run would.
"""

from __future__ import annotations

import numpy as np

from bebrjax.config import ConfigError


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch; raises ConfigError when not even one fits."""
    if batch_size <= 0 or batch_size > num_examples:
        raise ConfigError(
            f"config key 'train.batch_size' = {batch_size}: must be in [1, {num_examples}] "
            "(the number of training examples)"
        )
    return num_examples // batch_size


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """The row indices of the batch at `step`."""
    per_epoch = steps_per_epoch(num_examples, batch_size)
    epoch, index = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return order[index * batch_size : (index + 1) * batch_size]


def total_steps(train, num_examples: int) -> int:
    """The steps of a run: `train.steps`, or `train.epochs` epochs of full batches when 0."""
    if train.steps:
        return train.steps
    return max(1, int(round(train.epochs * steps_per_epoch(num_examples, train.batch_size))))
