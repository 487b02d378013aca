"""Where an IVF index's documents sit in the device tiles, and which tiles a query scans.

The host half of `bebrjax.search.ivf`'s layout: documents sorted by (list,
id), each list a run of whole tiles (its last tile padded with empty slots),
the tiles split over `devices` in contiguous runs of `per_device`, each
device's run followed by one empty tile (local index `per_device`).
"""

from __future__ import annotations

import numpy as np


def _exclusive_cumsum(x: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(x)[:-1]]).astype(np.int64)


class ListLayout:
    """The tile placement of documents whose lists are `lists` (int [n]).

    Args:
      lists: each document's list.
      nlist: lists.
      tile: documents per tile.
      devices: devices the tiles are split over.
    """

    def __init__(self, lists: np.ndarray, nlist: int, tile: int, devices: int):
        self.tile, self.devices = tile, devices
        self.sizes = np.bincount(lists, minlength=nlist)
        self.order = np.argsort(lists, kind="stable")  # documents by (list, id)
        self.starts = _exclusive_cumsum(self.sizes)
        self.tiles_per_list = -(-self.sizes // tile)
        self.first_tile = _exclusive_cumsum(self.tiles_per_list)
        self.per_device = max(1, -(-int(self.tiles_per_list.sum()) // devices))
        sorted_lists = lists[self.order]
        rank = np.arange(len(self.order)) - self.starts[sorted_lists]
        tile_index = self.first_tile[sorted_lists] + rank // tile
        per = self.per_device
        self._row = tile_index // per * (per + 1) + tile_index % per
        self._slot = rank % tile
        self.rows = devices * (per + 1)

    def tiled(self, x: np.ndarray) -> np.ndarray:
        """Per-document x [n, ...] placed as tiles [rows, ..., tile], documents last."""
        out = np.zeros((self.rows, self.tile, *x.shape[1:]), x.dtype)
        out[self._row, self._slot] = x[self.order]
        return np.ascontiguousarray(np.moveaxis(out, 1, -1))

    def doc_ids(self) -> np.ndarray:
        """Each slot's document id, -1 where empty: int32 [rows, tile]."""
        ids = np.full((self.rows, self.tile), -1, np.int32)
        ids[self._row, self._slot] = self.order
        return ids

    def members(self, lists: np.ndarray) -> np.ndarray:
        """The documents of `lists`, ids ascending."""
        runs = [self.order[self.starts[j] : self.starts[j] + self.sizes[j]] for j in lists]
        return np.sort(np.concatenate(runs))

    def scan_lengths(self, probes: np.ndarray) -> np.ndarray:
        """Tiles each query scans (all devices together): int [Q]."""
        return self.tiles_per_list[probes].sum(1)

    def tile_lists(self, probes: np.ndarray, batch: int) -> np.ndarray:
        """Local tile indices each query of `probes` [Q <= batch, nprobe] scans on each device.

        Returns:
          int32 [devices, batch, S] ([batch, S] on one device), padded with each
          device's empty tile; S is 2^j or 3 2^(j-2), a handful of compiled shapes.
        """
        counts = self.tiles_per_list[probes].ravel()
        query = np.repeat(np.repeat(np.arange(len(probes)), probes.shape[1]), counts)
        offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        tile = np.repeat(self.first_tile[probes].ravel(), counts) + offset
        device, local = tile // self.per_device, tile % self.per_device
        if self.devices > 1:  # group by device, each still in query order
            order = np.argsort(device, kind="stable")
            device, query, local = device[order], query[order], local[order]
        key = device * batch + query  # non-decreasing
        position = np.arange(len(key)) - np.searchsorted(key, key)
        longest = int(position.max()) + 1 if len(position) else 1
        width = 1 << (longest - 1).bit_length()
        if width >= 4 and longest <= 3 * width // 4:
            width = 3 * width // 4
        out = np.full((self.devices, batch, width), self.per_device, np.int32)
        out[device, query, position] = local
        return out if self.devices > 1 else out[0]
