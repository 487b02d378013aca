"""Serve an exported bundle with jax and numpy alone.

    from bebrjax.serving import load_bundle
    bundle = load_bundle("bundle/")            # checks every file's sha256
    planes = bundle.encode(x)                  # float32 [N, d] -> int8 [N, u+1, m]
    scores, ids = bundle.search(queries, k=10) # when the bundle carries an index

A bundle (written by `bebrjax export`) is a directory:
  * `encoder.jax`: the trained function serialized by `jax.export`
    (StableHLO, symbolic batch dimension, the variables baked in as
    constants); `jax.export.deserialize(blob).call(x)` runs it without
    bebrjax at all;
  * `manifest.json`: format and version, what the function is (kind, part,
    d, m, u, input normalization, input and output shapes and dtypes,
    platforms), the checkpoint step, the resolved config, the package
    versions it was exported with, and the sha256 of every other file;
  * `index/` (optional): a `BinaryIndex` of the documents, as saved.

A plan bundle (`export --plan`, manifest kind "plan") serves version-aware
search (`bebrjax.search.fusion`): instead of `encoder.jax` it holds
`encoders/<model>.jax`, one function as above per query model of a scoring
plan, and the plan itself, `plan.json` (`bebrjax.search.plan`); the
manifest's "plan" section describes every model (file, d, m, u, step, the
workdir it came from, input and output). Each model's float queries are
encoded by its own function and the index searched exactly as
`search_fused` searches it in the library:

    bundle = load_bundle("plan_bundle/")
    bundle.models                               # ("old", "new"): the query models
    planes = bundle.encode(x, model="new")
    scores, ids = bundle.search_versions({"old": x_old, "new": x_new}, k=10)

This module imports jax, numpy and `bebrjax.search` only: no flax, optax,
orbax or ml_collections, so a serving process carries none of the training
stack.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from bebrjax.errors import BundleError, PlanError, read_json
from bebrjax.search.fusion import search_fused
from bebrjax.search.index import BinaryIndex
from bebrjax.search.plan import ScoringPlan, from_dict

FORMAT = "bebrjax.bundle"
VERSION = 1
MANIFEST, ENCODER, INDEX = "manifest.json", "encoder.jax", "index"
PLAN, ENCODERS = "plan.json", "encoders"  # a plan bundle's plan and its models' functions
QUERY = "query.jax"  # a binarizer trained for asymmetric queries: float rows -> query planes


def sha256(path: str) -> str:
    """The hex sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


class Function:
    """One exported encoder of a bundle, with the shapes and dtypes the function itself has.

    Attributes:
      where: how errors name it (the bundle, and the model of a plan bundle).
      exported: the deserialized `jax.export.Exported`.
      normalization: what it does to its input first ("l2" or "none").
      input_shape, input_dtype, output_shape, output_dtype: of one row.
    """

    def __init__(self, where: str, exported: jax.export.Exported, normalization: str | None):
        self.where, self.exported, self.normalization = where, exported, normalization
        (given,), (made,) = exported.in_avals, exported.out_avals
        self.input_shape, self.input_dtype = tuple(given.shape[1:]), np.dtype(given.dtype)
        self.output_shape, self.output_dtype = tuple(made.shape[1:]), np.dtype(made.dtype)

    def encode(self, x: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """The function over `x` [N, ...] (see `Bundle.encode`)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size}: must be > 0")
        x = np.asarray(x)
        if x.ndim != len(self.input_shape) + 1 or x.shape[1:] != self.input_shape:
            want = ", ".join(map(str, self.input_shape))
            raise ValueError(
                f"{self.where}: inputs must have shape [N, {want}]; got {list(x.shape)}"
            )
        if x.dtype.kind != self.input_dtype.kind:
            raise ValueError(f"{self.where}: inputs must be {self.input_dtype}; got {x.dtype}")
        x = x.astype(self.input_dtype, copy=False)
        if x.dtype.kind == "f":
            rows = x.reshape(len(x), -1)
            finite = np.isfinite(rows).all(axis=1)
            if not finite.all():
                raise ValueError(
                    f"inputs have non-finite values (first at row {np.argmin(finite)})"
                )
            if self.normalization == "l2" and not rows.any(axis=1).all():
                row = int(np.argmin(rows.any(axis=1)))
                raise ValueError(f"input row {row} is all zeros and cannot be normalized")
        out = [self._call(x[s : s + batch_size]) for s in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, *self.output_shape), self.output_dtype)

    def _call(self, chunk: np.ndarray) -> np.ndarray:
        rows = 1 << max(3, (len(chunk) - 1).bit_length())
        padded = np.pad(chunk, [(0, rows - len(chunk))] + [(0, 0)] * (chunk.ndim - 1))
        return np.asarray(self.exported.call(padded))[: len(chunk)]


class Bundle:
    """A loaded bundle: its manifest, its encoder(s) and, when present, its index.

    Shapes and dtypes come from the serialized function itself, not from the
    manifest's description of it. A plan bundle has one function per query
    model (`models`) and its scoring plan (`plan`); a single-model bundle
    has `models` () and `plan` None.
    """

    def __init__(
        self,
        path: str,
        manifest: dict[str, Any],
        exported: jax.export.Exported | Mapping[str, jax.export.Exported],
        plan: ScoringPlan | None = None,
    ):
        self.path, self.manifest, self.plan = path, manifest, plan
        if plan is None:
            function = Function(path, exported, manifest.get("normalization"))
            self._functions: dict[str | None, Function] = {None: function}
        else:
            described = manifest["plan"]["models"]
            self._functions = {
                name: Function(
                    f"{path} (model {name!r})", blob, described[name].get("normalization")
                )
                for name, blob in exported.items()
            }
        self.models: tuple[str, ...] = () if plan is None else tuple(self._functions)
        self._index: BinaryIndex | None = None
        self._query: Function | None = None

    def function(self, model: str | None = None) -> Function:
        """The exported function of `model` (None: the single-model bundle's one).

        Raises:
          ValueError: a model named for a single-model bundle, none named for
            a plan bundle, or one it does not have (naming those it has).
        """
        if self.plan is None:
            if model is not None:
                raise ValueError(f"{self.path}: a single-model bundle; pass no model ({model!r})")
        elif model not in self._functions:
            known = ", ".join(map(repr, self.models))
            said = "name a model" if model is None else f"no query model {model!r}"
            raise ValueError(f"{self.path}: a plan bundle: {said} (it has {known})")
        return self._functions[model]

    def _single(self) -> Function:
        if self.plan is not None:
            raise BundleError(
                f"{self.path}: a plan bundle holds one encoder per query model "
                f"({', '.join(self.models)}): see `function(model)` and `search_versions`"
            )
        return self._functions[None]

    @property
    def exported(self) -> jax.export.Exported:
        """The single-model bundle's `jax.export.Exported` (BundleError for a plan bundle)."""
        return self._single().exported

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input row (BundleError for a plan bundle)."""
        return self._single().input_shape

    @property
    def input_dtype(self) -> np.dtype:
        """The input dtype (BundleError for a plan bundle)."""
        return self._single().input_dtype

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The shape of one output row (BundleError for a plan bundle)."""
        return self._single().output_shape

    @property
    def output_dtype(self) -> np.dtype:
        """The output dtype (BundleError for a plan bundle)."""
        return self._single().output_dtype

    def encode(
        self, x: np.ndarray, batch_size: int = 65536, model: str | None = None
    ) -> np.ndarray:
        """The exported function over `x` [N, ...], in batches of at most `batch_size` rows.

        Batches are padded to a power of two rows (at least 8) so that a
        server sees a few compiled shapes, not one per request size.

        Args:
          x: the rows.
          batch_size: rows per call.
          model: which query model's function (required for a plan bundle,
            and only there).

        Raises:
          ValueError: when the rows do not have the bundle's input shape and
            kind of dtype, or hold a non-finite (or, for an L2-normalizing
            encoder, all-zero) row; on a missing or unknown model (naming
            the bundle's).
        """
        return self.function(model).encode(x, batch_size)

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
        """(scores, ids) [Q, k] of the bundle's index for float queries, encoded here.

        Raises:
          BundleError: for a plan bundle (its queries come one per model:
            `search_versions`), or a bundle without an index.
        """
        if self.plan is not None:
            raise BundleError(
                f"{self.path}: a plan bundle is searched with one query per model: "
                f"search_versions({{model: queries}}, k) with models {', '.join(self.models)}"
            )
        return self.index.search(self.encode_query(queries, bits=self.index.query_bits), k)

    def encode_query(
        self, x: np.ndarray, batch_size: int = 65536, bits: int | None = None
    ) -> np.ndarray:
        """Query planes at a query precision, as `Binarizer.encode_query` gives them.

        Args:
          x: float queries [N, d].
          batch_size: rows per call.
          bits: 0: the codes (`encode`); B: the exported query function, which
            a bundle of a binarizer trained for B-bit queries carries
            (`query.jax`); None: that B, or 0 without one.

        Raises:
          BundleError: for a precision the bundle has no function for.
        """
        served = self.manifest.get("query", {}).get("bits", 0)
        bits = served if bits is None else bits
        if bits == 0:
            return self.encode(x, batch_size)
        if bits != served:
            raise BundleError(
                f"{self.path}: queries at {bits} bits asked; this bundle encodes codes and "
                + (f"{served}-bit queries" if served else "no other query precision")
            )
        if self._query is None:
            self._query = Function(f"{self.path} (queries)", _deserialize(self.path, QUERY), "l2")
        return self._query.encode(x, batch_size)

    def search_versions(
        self, queries: Mapping[str, np.ndarray], k: int, batch_size: int = 65536
    ) -> tuple[np.ndarray, np.ndarray]:
        """The exact version-aware top k of the bundle's index (`search_fused`).

        The plan is restricted to the index's versions (`ScoringPlan.only`):
        a query model that then scores none of them is not needed, and its
        queries, if given, are not encoded.

        Args:
          queries: query model -> float queries [Q, d_model], row r of each
            the same query, for every model that scores a version of the index.
          k: results per query, 1 <= k <= the index's size.
          batch_size: rows per call of each encoder.

        Returns:
          (scores float32 [Q, k] descending, ids int64 [Q, k]), ties to the lower id.

        Raises:
          BundleError: a single-model bundle (`search`), or one without an index.
          PlanError: an index holding a version the plan does not score.
          ValueError: queries of a model the plan does not know, none for one
            it needs, or rows the encoders refuse.
        """
        if self.plan is None:
            raise BundleError(f"{self.path}: not a plan bundle (export --plan); use search")
        index = self.index
        fusion = self.plan.only(list(index.versions)).fusion()
        unknown = sorted(set(queries) - set(self.models))
        if unknown:
            raise ValueError(
                f"{self.path}: queries of model(s) {unknown} that the plan does not know "
                f"(its query models: {', '.join(self.models)})"
            )
        missing = [name for name in fusion.models if name not in queries]
        if missing:
            raise ValueError(
                f"{self.path}: no queries of model(s) {missing}; the index's versions "
                f"{list(index.versions)} are scored by {', '.join(fusion.models)}"
            )
        planes = {name: self.encode(queries[name], batch_size, name) for name in fusion.models}
        return search_fused(index, planes, fusion, k)


def _plan_files(path: str, manifest: dict[str, Any], files: dict) -> dict[str, str]:
    """The file of each query model of a plan bundle's manifest (name -> file), checked."""
    section = manifest["plan"]
    models = section.get("models") if isinstance(section, dict) else None
    if not isinstance(models, dict) or not models or section.get("file") != PLAN:
        raise BundleError(f"{path}: {MANIFEST}'s plan section names no {PLAN} or no models")
    named = {
        name: info.get("file") if isinstance(info, dict) else None for name, info in models.items()
    }
    unlisted = [str(f) for f in (PLAN, *named.values()) if not isinstance(f, str) or f not in files]
    if unlisted:
        raise BundleError(
            f"{path}: {MANIFEST} does not list the plan's file(s) {', '.join(unlisted)}"
        )
    return named


def _read_plan(path: str, named: dict[str, str]) -> ScoringPlan:
    where = os.path.join(path, PLAN)
    try:
        plan = from_dict(read_json(where, BundleError), where)
    except PlanError as e:
        raise BundleError(str(e)) from None
    if set(plan.fusion().models) != set(named):
        raise BundleError(
            f"{path}: the manifest's models {sorted(named)} are not the plan's query models "
            f"{list(plan.fusion().models)}"
        )
    return plan


def _deserialize(path: str, name: str) -> jax.export.Exported:
    with open(os.path.join(path, name), "rb") as f:
        blob = f.read()
    try:
        return jax.export.deserialize(bytearray(blob))
    except Exception as e:  # noqa: BLE001 - any failure to parse is a bad file
        raise BundleError(f"{path}: {name} cannot be deserialized ({e})") from None


def load_bundle(path: str, verify: bool = True) -> Bundle:
    """Opens the bundle (single-model or plan) in directory `path`.

    Args:
      path: the bundle directory.
      verify: check the sha256 of every file against the manifest (on by
        default; reads every file once).

    Raises:
      BundleError: naming the bundle and the file: not a bundle, another
        format version, a file missing, unlisted, altered or truncated, a
        plan that is not the manifest's.
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
    if not isinstance(files, dict) or ("plan" not in manifest and ENCODER not in files):
        raise BundleError(f"{path}: {MANIFEST} lists no files (or not {ENCODER})")
    if "query" in manifest and QUERY not in files:
        raise BundleError(f"{path}: {MANIFEST} announces a query function but lists no {QUERY}")
    named = _plan_files(path, manifest, files) if "plan" in manifest else None
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
    if named is None:
        return Bundle(path, manifest, _deserialize(path, ENCODER))
    plan = _read_plan(path, named)
    exported = {name: _deserialize(path, named[name]) for name in plan.fusion().models}
    return Bundle(path, manifest, exported, plan)
