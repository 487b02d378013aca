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
import json
import os
from typing import Any

import jax
import numpy as np

from bebrjax.search.index import BinaryIndex

FORMAT = "bebrjax.bundle"
VERSION = 1
MANIFEST, ENCODER, INDEX = "manifest.json", "encoder.jax", "index"


class BundleError(ValueError):
    """A bundle that cannot be used: missing, altered, truncated or foreign."""


def sha256(path: str) -> str:
    """The hex sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


class Bundle:
    """A loaded bundle: its manifest, its encoder and, when present, its index."""

    def __init__(self, path: str, manifest: dict[str, Any], exported: jax.export.Exported):
        self.path, self.manifest, self.exported = path, manifest, exported
        function = manifest["function"]
        self.input_shape = tuple(function["input"]["shape"][1:])
        self.input_dtype = np.dtype(function["input"]["dtype"])
        self._index: BinaryIndex | None = None

    def encode(self, x: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """The exported function over `x` [N, ...], in batches of at most `batch_size` rows.

        Raises:
          ValueError: when the rows do not have the bundle's input shape or
            hold non-finite values.
        """
        x = np.asarray(x)
        if x.ndim != len(self.input_shape) + 1 or x.shape[1:] != self.input_shape:
            want = ", ".join(map(str, self.input_shape))
            raise ValueError(
                f"{self.path}: inputs must have shape [N, {want}]; got {list(x.shape)}"
            )
        x = x.astype(self.input_dtype, copy=False)
        if x.dtype.kind == "f":
            finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
            if not finite.all():
                raise ValueError(
                    f"inputs have non-finite values (first at row {np.argmin(finite)})"
                )
        out = [
            np.asarray(self.exported.call(x[s : s + batch_size]))
            for s in range(0, len(x), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, *self.output_shape), self.output_dtype)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The shape of one output row."""
        return tuple(self.manifest["function"]["output"]["shape"][1:])

    @property
    def output_dtype(self) -> np.dtype:
        """The output's dtype."""
        return np.dtype(self.manifest["function"]["output"]["dtype"])

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
        format version, a file missing, altered or truncated.
    """
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise BundleError(f"{path}: not a bundle (no {MANIFEST})")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({e})") from None
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
    for name, digest in sorted(files.items()):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise BundleError(f"{path}: {name} is missing")
        if verify and sha256(file) != digest:
            raise BundleError(f"{path}: {name} does not match its sha256 (altered or truncated)")
    with open(os.path.join(path, ENCODER), "rb") as f:
        blob = f.read()
    try:
        exported = jax.export.deserialize(bytearray(blob))
    except Exception as e:  # noqa: BLE001 - any failure to parse is a bad file
        raise BundleError(f"{path}: {ENCODER} cannot be deserialized ({e})") from None
    return Bundle(path, manifest, exported)
