"""Seeded train/eval splits of a data set."""

from __future__ import annotations

import os

import numpy as np

from bebrjax.errors import DataError


def _read_indices(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise DataError(f"split.eval_indices: {path}: no such file")
    try:
        return np.load(path) if path.endswith(".npy") else np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (ValueError, OSError) as e:
        raise DataError(f"split.eval_indices: {path}: cannot be read as indices ({e})") from None


def _check_groups_whole(groups: np.ndarray, held: np.ndarray) -> None:
    """Raises DataError when explicit eval rows split a group between train and eval."""
    in_eval = np.zeros(len(groups), bool)
    in_eval[held] = True
    left_out = np.flatnonzero(np.isin(groups, groups[held]) & ~in_eval)
    if left_out.size:
        rows = np.flatnonzero(groups == groups[left_out[0]])
        raise DataError(
            f"split.eval_indices holds some pairs of an item but not all: rows "
            f"{', '.join(map(str, rows[:8]))}{' ...' if rows.size > 8 else ''} show one item "
            "and would be on both sides of the split; hold out whole groups"
        )


def train_eval_split(
    n: int,
    *,
    eval_fraction: float = 0.2,
    eval_indices: str | np.ndarray | None = None,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the train and eval parts.

    Args:
      n: the number of rows.
      eval_fraction: the share held out for evaluation, drawn with `seed`.
        With `groups`, it is the share of groups, each held out whole.
      eval_indices: explicit eval rows instead: an int array, or the path of an
        `.npy` or text file of them; every other row trains.
      seed: seed of the random split.
      groups: optional [n] item ids (`PairedEmbeddings.groups`): the rows of
        one item stay on one side.

    Returns:
      (train, eval) sorted int64 index arrays, disjoint and both non-empty.

    Raises:
      DataError: on a fraction outside (0, 1), out-of-range or duplicate
        indices, explicit indices that put one group on both sides, or a
        split that leaves either side empty.
    """
    if isinstance(eval_indices, str) and eval_indices:
        eval_indices = _read_indices(eval_indices)
    if eval_indices is not None and not isinstance(eval_indices, str):
        held = np.asarray(eval_indices)
        if held.ndim != 1 or not np.issubdtype(held.dtype, np.integer):
            raise DataError(
                f"split.eval_indices must be a 1-D integer list, got {held.dtype} "
                f"of shape {held.shape}"
            )
        if held.size and (held.min() < 0 or held.max() >= n):
            raise DataError(
                f"split.eval_indices must lie in [0, {n}); got {held.min()}..{held.max()}"
            )
        if np.unique(held).size != held.size:
            raise DataError("split.eval_indices holds duplicates")
        held = np.sort(held).astype(np.int64)
        if groups is not None:
            _check_groups_whole(groups, held)
    else:
        if not 0.0 < eval_fraction < 1.0:
            raise DataError(f"split.eval_fraction must be in (0, 1), got {eval_fraction}")
        rng = np.random.default_rng(seed)
        if groups is None:
            held = np.sort(rng.permutation(n)[: int(round(eval_fraction * n))])
        else:
            items = np.unique(groups)
            chosen = items[rng.permutation(items.size)[: int(round(eval_fraction * items.size))]]
            held = np.flatnonzero(np.isin(groups, chosen))
        held = held.astype(np.int64)
    train = np.setdiff1d(np.arange(n, dtype=np.int64), held)
    if held.size == 0 or train.size == 0:
        raise DataError(
            f"the split of {n} rows leaves {train.size} to train and {held.size} to evaluate; "
            "both need at least one"
        )
    return train, held
