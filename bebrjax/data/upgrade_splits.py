"""The universal upgrade splits (UniBCT): old and new training sets, and a held-out eval.

First, `eval_fraction` of the items of every class with at least 3 items
(and never fewer than 2) is held out, half as queries and half as gallery,
so every such class is evaluated, old or new. The
rest (the pool) is split by `kind`, with `old_ratio` (0.3 by default):

| kind           | old training set                       | new training set            |
|----------------|----------------------------------------|-----------------------------|
| extended_data  | old_ratio of the pool items of each class | the whole pool           |
| extended_class | the pool items of old_ratio of the classes | the whole pool          |
| open_data      | old_ratio of the pool items of each class | the other pool items     |
| open_class     | the pool items of old_ratio of the classes | the other classes' items |

Everything is drawn with `seed`. `accounting()` gives the images and
classes of every part, and the overlap of the old and new sets.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bebrjax.data.pairs import DataError

KINDS = ("extended_data", "extended_class", "open_data", "open_class")


@dataclasses.dataclass(frozen=True)
class UpgradeSplit:
    """Row indices of each part of an upgrade split (sorted int64 arrays)."""

    kind: str
    old: np.ndarray
    new: np.ndarray
    query: np.ndarray
    gallery: np.ndarray

    def accounting(self, y: np.ndarray) -> dict[str, dict[str, int]]:
        """{part: {"images": .., "classes": ..}} plus the old/new overlap."""
        out = {
            part: {"images": len(idx), "classes": len(np.unique(y[idx]))}
            for part in ("old", "new", "query", "gallery")
            for idx in [getattr(self, part)]
        }
        shared = np.intersect1d(np.unique(y[self.old]), np.unique(y[self.new]))
        out["old_and_new"] = {
            "images": len(np.intersect1d(self.old, self.new)),
            "classes": len(shared),
        }
        return out


def universal_split(
    y: np.ndarray,
    kind: str,
    *,
    old_ratio: float = 0.3,
    eval_fraction: float = 0.2,
    seed: int = 0,
) -> UpgradeSplit:
    """Splits rows with labels `y` for an upgrade of kind `kind`.

    Raises:
      DataError: on an unknown kind, ratios outside (0, 1), or a part left empty.
    """
    if kind not in KINDS:
        raise DataError(f"split '{kind}' is unknown; expected one of {', '.join(KINDS)}")
    for name, value in (("old_ratio", old_ratio), ("eval_fraction", eval_fraction)):
        if not 0.0 < value < 1.0:
            raise DataError(f"split.{name} must be in (0, 1), got {value}")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    query, gallery, pool = [], [], []
    for c in classes:
        rows = rng.permutation(np.flatnonzero(y == c))
        held = max(2, int(round(eval_fraction * len(rows)))) if len(rows) >= 3 else 0
        query.append(rows[: held // 2])
        gallery.append(rows[held // 2 : held])
        pool.append(rows[held:])

    if kind.endswith("_class"):
        old_classes = rng.permutation(classes)[: max(1, int(round(old_ratio * len(classes))))]
        in_old = [np.isin(c, old_classes) for c in classes]
        old = [rows for rows, keep in zip(pool, in_old, strict=True) if keep]
        rest = [rows for rows, keep in zip(pool, in_old, strict=True) if not keep]
    else:
        cut = [int(round(old_ratio * len(rows))) for rows in pool]
        old = [rows[:n] for rows, n in zip(pool, cut, strict=True)]
        rest = [rows[n:] for rows, n in zip(pool, cut, strict=True)]
    new = pool if kind.startswith("extended") else rest

    def join(parts):
        return np.sort(np.concatenate([np.asarray(p, np.int64) for p in parts] or [[]]))

    split = UpgradeSplit(kind, join(old), join(new), join(query), join(gallery))
    for part in ("old", "new", "query", "gallery"):
        if len(getattr(split, part)) == 0:
            raise DataError(
                f"split '{kind}' leaves the {part} set empty ({len(y)} items, "
                f"{len(classes)} classes); use more data or other ratios"
            )
    return split
