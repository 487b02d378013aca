"""The universal upgrade splits (UniBCT): old and new training sets, and a held-out eval.

First, `eval_fraction` of the items of every class with at least 3 items
(and never fewer than 2) is held out, half as queries and half as gallery,
so every such class is evaluated, old or new; at least 2 classes must have
that many, or no query would have a negative in the gallery. The
rest (the pool) is split by `kind`, with `old_ratio` (0.3 by default):

| kind           | old training set                       | new training set            |
|----------------|----------------------------------------|-----------------------------|
| extended_data  | old_ratio of the pool items of each class | the whole pool           |
| extended_class | the pool items of old_ratio of the classes | the whole pool          |
| open_data      | old_ratio of the pool items of each class | the other pool items     |
| open_class     | the pool items of old_ratio of the classes | the other classes' items |

Everything is drawn with `seed`. `accounting()` gives the images and
classes of every part, and the overlap of the old and new sets.
`load_labelled` loads an upgrade config's labelled data and draws its split.

`sequence_split` gives the nested training sets of a sequence of upgrades
(phi1 -> phi2 -> ...): step t trains on `ratios[t]` of the classes
(extended_class) or of every class's items (extended_data), each set
containing the previous one; the first is the old set of `universal_split`
with old_ratio = ratios[0], and the held-out queries and gallery are the same.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from bebrjax.data import get_data
from bebrjax.data.labelled import Labelled
from bebrjax.errors import ConfigError, DataError

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
      DataError: on an unknown kind, ratios outside (0, 1), fewer than 2
        classes held out, or a part left empty.
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
    evaluated = sum(len(rows) > 0 for rows in query)
    if evaluated < 2:
        raise DataError(
            f"split '{kind}': {evaluated} of the {len(classes)} classes has 3 or more items "
            f"({len(y)} items in all), so the held-out gallery would hold no negative for any "
            "query; at least 2 such classes are needed"
        )

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


def sequence_split(
    y: np.ndarray,
    kind: str,
    ratios,
    *,
    eval_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Nested training sets of a sequence of upgrades, and the held-out split.

    Args:
      y: [N] labels.
      kind: "extended_class" or "extended_data".
      ratios: increasing shares in (0, 1], one per step.
      eval_fraction: held out for evaluation, as in `universal_split`.
      seed: the draw.

    Returns:
      ([train rows of each step], query rows, gallery rows).

    Raises:
      DataError: on another kind, ratios that do not increase within (0, 1],
        or a part left empty.
    """
    if kind not in ("extended_class", "extended_data"):
        raise DataError(
            f"split '{kind}' cannot grow over a sequence; use extended_class or extended_data"
        )
    ratios = [float(r) for r in ratios]
    if not ratios or any(not 0 < r <= 1 for r in ratios) or sorted(set(ratios)) != ratios:
        raise DataError(f"sequence ratios {tuple(ratios)} must increase within (0, 1]")

    def draw(ratio: float) -> UpgradeSplit:
        return universal_split(y, kind, old_ratio=ratio, eval_fraction=eval_fraction, seed=seed)

    pool = draw(0.5)  # the held-out split and the whole pool do not depend on the ratio
    train = [pool.new if r == 1 else draw(r).old for r in ratios]
    return train, pool.query, pool.gallery


def labelled_data(config: ml_collections.ConfigDict) -> Labelled:
    """The labelled data of an upgrade config's `data` section, validated.

    Raises:
      DataError: on bad data.
      ConfigError: when the data set named is not labelled data.
    """
    data = get_data(config.data)
    if not isinstance(data, Labelled):
        raise ConfigError(
            f"data.name={config.data.name!r} gives {type(data).__name__}; "
            "upgrades train on labelled data"
        )
    return data


def load_labelled(config: ml_collections.ConfigDict) -> tuple[Labelled, UpgradeSplit]:
    """The labelled data of an upgrade config and its universal split (`split.*`, `seed`).

    Raises:
      DataError: on bad data or a split that leaves a part empty.
      ConfigError: when the data set named is not labelled data.
    """
    data = labelled_data(config)
    split = universal_split(
        data.y,
        config.split.kind,
        old_ratio=config.split.old_ratio,
        eval_fraction=config.split.eval_fraction,
        seed=config.seed,
    )
    return data, split
