"""Labelled data for model upgrades: images or feature vectors with class labels.

`x` is either uint8 images [N, H, W, C] (NHWC) or float feature vectors
[N, d]; `y` holds int class labels [N]. Loaders looked up by name return a
`Labelled`: `labelled` (this module: a user's .npz), `classes` (the
synthetic default) and `digits` (scikit-learn's bundled 8x8 digits, an optional extra).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bebrjax.data.npz import NamedArrays
from bebrjax.errors import DataError

_CHUNK = 65536


@dataclasses.dataclass(frozen=True)
class Labelled:
    """Inputs with class labels.

    Attributes:
      x: uint8 images [N, H, W, C] or float32 features [N, d].
      y: int32 labels [N], remapped to 0..num_classes-1.
      source: where the data came from.
    """

    x: np.ndarray
    y: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        """Classes present (labels are 0..num_classes-1)."""
        return int(self.y.max()) + 1

    @property
    def is_image(self) -> bool:
        """True for [N, H, W, C] images."""
        return self.x.ndim == 4

    def subset(self, index: np.ndarray) -> Labelled:
        """The rows at `index`, labels unchanged."""
        return Labelled(self.x[index], self.y[index], self.source)


def make_labelled(
    x: np.ndarray, y: np.ndarray, *, source: str = "arrays", names: tuple[str, str] = ("x", "y")
) -> Labelled:
    """Validates raw arrays; labels are remapped to 0..C-1 in sorted order.

    Raises:
      DataError: naming the source and the problem: rank or dtype of `x`,
        empty arrays, mismatched lengths, non-finite features, non-integer
        labels, a single class.
    """
    xname, yname = names
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 4:
        if x.dtype != np.uint8:
            raise DataError(f"{source}: images '{xname}' must be uint8 NHWC; got {x.dtype}")
    elif x.ndim == 2:
        if not np.issubdtype(x.dtype, np.floating):
            raise DataError(
                f"{source}: features '{xname}' must be floating point; got dtype {x.dtype}"
            )
    else:
        raise DataError(
            f"{source}: '{xname}' must be images [N, H, W, C] or features [N, d]; "
            f"got shape {list(x.shape)}"
        )
    if x.shape[0] == 0 or min(x.shape) == 0:
        raise DataError(f"{source}: '{xname}' is empty (shape {list(x.shape)})")
    if y.shape != (x.shape[0],):
        raise DataError(f"{source}: '{yname}' has shape {list(y.shape)}; expected [{x.shape[0]}]")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: labels '{yname}' must be integers; got dtype {y.dtype}")
    if x.ndim == 2:
        x = x.astype(np.float32)
        for start in range(0, len(x), _CHUNK):
            finite = np.isfinite(x[start : start + _CHUNK]).all(axis=1)
            if not finite.all():
                row = start + int(np.argmin(finite))
                raise DataError(f"{source}: '{xname}' has non-finite values (first at row {row})")
    classes, labels = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise DataError(
            f"{source}: labels '{yname}' hold one class ({classes[0]}); retrieval by class "
            "needs at least 2 (a query's negatives are the items of other classes)"
        )
    return Labelled(x, labels.astype(np.int32), source)


def get_data(path: str, x_key: str = "x", y_key: str = "y") -> Labelled:
    """Loads and validates `x` and `y` from an .npz file or a directory of .npy files."""
    arrays = NamedArrays(path)
    return make_labelled(arrays.get(x_key), arrays.get(y_key), source=path, names=(x_key, y_key))
