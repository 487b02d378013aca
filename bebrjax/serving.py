"""Serve an exported bundle with jax and numpy alone.

    from bebrjax.serving import load_bundle
    bundle = load_bundle("bundle/")            # checks every file's sha256
    planes = bundle.encode(x)                  # float32 [N, d] -> int8 [N, u+1, m]
    scores, ids = bundle.search(queries, k=10) # when the bundle carries an index

A bundle (written by `python -m bebrjax.export`) is a directory:
  * `encoder.jax`: the trained function serialized by `jax.export`
    (StableHLO, symbolic batch dimension, the variables baked in as
    constants); `jax.export.deserialize(blob).call(x)` runs it without
    bebrjax at all;
  * `manifest.json`: format and version, what the function is (kind, part,
    d, m, u, input normalization, input and output shapes and dtypes,
    platforms), the checkpoint step, the resolved config, the package
    versions it was exported with, and the sha256 of every other file;
  * `index/` (optional): a `BinaryIndex` of the documents, as saved.

This module imports jax, numpy and `bebrjax.search` only: no flax, optax,
orbax or ml_collections, so a serving process carries none of the training
stack.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import jax
import numpy as np

from bebrjax.errors import BundleError, read_json
from bebrjax.search.index import BinaryIndex

FORMAT = "bebrjax.bundle"
VERSION = 1
MANIFEST, ENCODER, INDEX = "manifest.json", "encoder.jax", "index"


def sha256(path: str) -> str:
    """The hex sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


class Bundle:
    """A loaded bundle: its manifest, its encoder and, when present, its index.

    Shapes and dtypes come from the serialized function itself, not from the
    manifest's description of it.
    """

    def __init__(self, path: str, manifest: dict[str, Any], exported: jax.export.Exported):
        self.path, self.manifest, self.exported = path, manifest, exported
        (given,), (made,) = exported.in_avals, exported.out_avals
        self.input_shape, self.input_dtype = tuple(given.shape[1:]), np.dtype(given.dtype)
        self.output_shape, self.output_dtype = tuple(made.shape[1:]), np.dtype(made.dtype)
        self._index: BinaryIndex | None = None

    def encode(self, x: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """The exported function over `x` [N, ...], in batches of at most `batch_size` rows.

        Batches are padded to a power of two rows (at least 8) so that a
        server sees a few compiled shapes, not one per request size.

        Raises:
          ValueError: when the rows do not have the bundle's input shape and
            kind of dtype, or hold a non-finite (or, for an L2-normalizing
            encoder, all-zero) row.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size}: must be > 0")
        x = np.asarray(x)
        if x.ndim != len(self.input_shape) + 1 or x.shape[1:] != self.input_shape:
            want = ", ".join(map(str, self.input_shape))
            raise ValueError(
                f"{self.path}: inputs must have shape [N, {want}]; got {list(x.shape)}"
            )
        if x.dtype.kind != self.input_dtype.kind:
            raise ValueError(f"{self.path}: inputs must be {self.input_dtype}; got {x.dtype}")
        x = x.astype(self.input_dtype, copy=False)
        if x.dtype.kind == "f":
            rows = x.reshape(len(x), -1)
            finite = np.isfinite(rows).all(axis=1)
            if not finite.all():
                raise ValueError(
                    f"inputs have non-finite values (first at row {np.argmin(finite)})"
                )
            if self.manifest.get("normalization") == "l2" and not rows.any(axis=1).all():
                row = int(np.argmin(rows.any(axis=1)))
                raise ValueError(f"input row {row} is all zeros and cannot be normalized")
        out = [self._call(x[s : s + batch_size]) for s in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, *self.output_shape), self.output_dtype)

    def _call(self, chunk: np.ndarray) -> np.ndarray:
        rows = 1 << max(3, (len(chunk) - 1).bit_length())
        padded = np.pad(chunk, [(0, rows - len(chunk))] + [(0, 0)] * (chunk.ndim - 1))
        return np.asarray(self.exported.call(padded))[: len(chunk)]

    @property
    def index(self) -> BinaryIndex:
        """The bundle's index, memory-mapped (loaded on first use).

        Raises:
          BundleError: when the bundle carries no index.
        """
        if self._index is None:
            if "index" not in self.manifest:
                raise BundleError(f"{self.path}: this bundle carries no index (export --index)")
            self._index = BinaryIndex.load(os.path.join(self.path, INDEX))
        return self._index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) [Q, k] of the bundle's index for float queries, encoded here."""
        return self.index.search(self.encode(queries), k)


def load_bundle(path: str, verify: bool = True) -> Bundle:
    """Opens the bundle in directory `path`.

    Args:
      path: the bundle directory.
      verify: check the sha256 of every file against the manifest (on by
        default; reads every file once).

    Raises:
      BundleError: naming the bundle and the file: not a bundle, another
        format version, a file missing, unlisted, altered or truncated.
    """
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise BundleError(f"{path}: not a bundle (no {MANIFEST})")
    manifest = read_json(manifest_path, BundleError)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: {MANIFEST} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise BundleError(
            f"{path}: bundle format version {manifest.get('version')} "
            f"(this bebrjax reads version {VERSION})"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or ENCODER not in files:
        raise BundleError(f"{path}: {MANIFEST} lists no files (or not {ENCODER})")
    on_disk = {
        os.path.relpath(os.path.join(root, name), path)
        for root, _, names in os.walk(path)
        for name in names
    } - {MANIFEST}
    if set(files) != on_disk:
        extra, missing = sorted(on_disk - set(files)), sorted(set(files) - on_disk)
        raise BundleError(
            f"{path}: the files differ from the manifest's list"
            + (f"; not listed: {', '.join(extra)}" if extra else "")
            + (f"; missing: {', '.join(missing)}" if missing else "")
        )
    if "index" in manifest and not any(name.startswith(f"{INDEX}/") for name in files):
        raise BundleError(f"{path}: {MANIFEST} announces an index but lists none of its files")
    if verify:
        for name, digest in sorted(files.items()):
            if sha256(os.path.join(path, name)) != digest:
                raise BundleError(
                    f"{path}: {name} does not match its sha256 (altered or truncated)"
                )
    with open(os.path.join(path, ENCODER), "rb") as f:
        blob = f.read()
    try:
        exported = jax.export.deserialize(bytearray(blob))
    except Exception as e:  # noqa: BLE001 - any failure to parse is a bad file
        raise BundleError(f"{path}: {ENCODER} cannot be deserialized ({e})") from None
    return Bundle(path, manifest, exported)
