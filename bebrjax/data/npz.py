"""Paired embeddings from a user's files.

`path` is either an `.npz` archive holding the arrays by key, or a directory
holding one `<key>.npy` per array (memory-mapped, so validation streams
through files larger than memory). Arrays: `query` [N, d] and `doc` [N, d]
(row i of one pairs with row i of the other) and, optionally, `labels` [N]
and `groups` [N] (integer ids of the item each pair shows, e.g. the image of
an image/caption pair: see `bebrjax.data.pairs`); the key names are
arguments. An empty `labels_key` or `groups_key` ignores that array; the
default names ("labels", "groups") absent from the file mean the data has
none, and any other name must name an array of the file (else a DataError:
a misspelled key would silently split and score without groups).
`groups_key="labels"` reads labels that are item ids as the groups.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from bebrjax.data.pairs import PairedEmbeddings, make_pairs
from bebrjax.errors import DataError


class NamedArrays:
    """Read access to named arrays of an .npz file or a directory of .npy files.

    Raises:
      DataError: when `path` is missing, not an .npz archive, or a lone .npy file.
    """

    def __init__(self, path: str):
        self.path = path
        if not path:
            raise DataError("data.path is empty: give an .npz file or a directory of .npy files")
        if os.path.isdir(path):
            self._npz = None
            self.keys = sorted(f[:-4] for f in os.listdir(path) if f.endswith(".npy"))
        elif os.path.isfile(path):
            if path.endswith(".npy"):
                raise DataError(
                    f"{path}: a .npy file holds one array; give an .npz file, or a "
                    "directory with one <key>.npy per array"
                )
            try:
                self._npz = np.load(path, allow_pickle=False)
            except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
                raise DataError(f"{path}: not a readable .npz file ({e})") from None
            if not isinstance(self._npz, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: not an .npz archive")
            self.keys = sorted(self._npz.files)
        else:
            raise DataError(f"{path}: no such file or directory")

    def get(self, key: str) -> np.ndarray:
        """The array named `key` (memory-mapped from a directory of .npy files)."""
        if key not in self.keys:
            raise DataError(
                f"{self.path}: no array '{key}' (arrays present: {', '.join(self.keys) or 'none'})"
            )
        try:
            if self._npz is not None:
                return self._npz[key]
            return np.load(os.path.join(self.path, f"{key}.npy"), mmap_mode="r")
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"{self.path}: array '{key}' cannot be read ({e})") from None


def get_data(
    path: str,
    query_key: str = "query",
    doc_key: str = "doc",
    labels_key: str = "labels",
    groups_key: str = "groups",
) -> PairedEmbeddings:
    """Loads and validates paired embeddings from `path`.

    Raises:
      DataError: naming the file and the problem (missing file or key, bad
        shapes or dtypes, non-finite values, empty arrays).
    """
    arrays = NamedArrays(path)
    query, doc = arrays.get(query_key), arrays.get(doc_key)

    def optional(key: str, default: str) -> np.ndarray | None:
        # The default names are looked for; any other name was asked for and must be there.
        if not key or (key == default and key not in arrays.keys):
            return None
        return arrays.get(key)

    labels, groups = optional(labels_key, "labels"), optional(groups_key, "groups")
    return make_pairs(
        query,
        doc,
        labels,
        groups=groups,
        source=path,
        names=(query_key, doc_key, labels_key, groups_key),
    )
