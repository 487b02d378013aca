"""The trained parts of a run as plain objects: an `Encoder` per part, grouped by run kind."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from bebrjax import sharding
from bebrjax.data.pairs import row_norms
from bebrjax.errors import DataError, LoadError
from bebrjax.models.binarizer import query_planes
from bebrjax.search import codes as codes_lib


def l2_normalize_rows(x: jax.Array) -> jax.Array:
    """float32 x / ||x|| per row, as the data loaders do; an all-zero row stays zero.

    A division by the norm, as numpy's loaders compute it, rather than the
    models' `l2_normalize` (a multiply by an rsqrt with a floor): the closer
    the arithmetic to the loaders', the rarer a last-bit difference.
    """
    x = x.astype(jnp.float32)
    norms = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.where(norms > 0, norms, 1.0)


@dataclasses.dataclass(frozen=True)
class Encoder:
    """One trained function of a run: `forward(variables, x)` with its variables.

    Attributes:
      name: the part's name ("binarizer", "old", "new", "psi").
      kind: "binarizer" (float rows -> int8 planes), "embedder" (inputs ->
        float embeddings) or "adapter" (old embeddings -> new-space embeddings).
      forward: a pure, jit-able `(variables, x[N, ...]) -> y[N, ...]`,
        input handling included (see `bebrjax.inference`).
      variables: the trained flax variables, replicated on `mesh`.
      input_shape: the shape of one input row.
      input_dtype: the dtype the function takes.
      normalization: what `forward` does to its input first: "l2" or "none".
      step: the checkpoint step the variables come from.
      mesh: the devices the variables live on.
    """

    name: str
    kind: str
    forward: Callable[[Any, jax.Array], jax.Array]
    variables: Any
    input_shape: tuple[int, ...]
    input_dtype: np.dtype
    normalization: str
    step: int
    mesh: Mesh

    def __call__(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """`forward` over `x` (numpy or memory-mapped) in batches sharded on the mesh.

        Raises:
          ValueError: on a batch size below 1 or rows of the wrong shape;
            DataError (a ValueError) at the first non-finite row, or
            all-zero row when the input is L2-normalized.
        """
        if batch_size <= 0:
            raise ValueError(f"{self.name}: batch_size={batch_size} must be > 0")
        x = check_rows(x, self.input_shape, self.name)
        if np.issubdtype(x.dtype, np.floating):
            for start in range(0, len(x), batch_size):
                check_values(
                    x[start : start + batch_size], self.normalization, f"{self.name} input", start
                )
        return sharding.batched_apply(self.forward, self.variables, x, self.mesh, batch_size)

    def __repr__(self) -> str:
        shape = ", ".join(map(str, self.input_shape))
        return (
            f"Encoder(name={self.name!r}, kind={self.kind!r}, step={self.step}, "
            f"input=[N, {shape}] {np.dtype(self.input_dtype).name})"
        )

    def output_spec(self) -> jax.ShapeDtypeStruct:
        """Shape (of one row) and dtype of the output."""
        out = jax.eval_shape(
            self.forward,
            self.variables,
            jax.ShapeDtypeStruct((1, *self.input_shape), self.input_dtype),
        )
        return jax.ShapeDtypeStruct(out.shape[1:], out.dtype)


def check_values(chunk: np.ndarray, normalization: str, name: str, start: int = 0) -> None:
    """Refuses a non-finite row, and an all-zero row where rows are L2-normalized.

    Raises:
      DataError: naming `name` and the first bad row (numbered from `start`).
    """
    rows = np.asarray(chunk, np.float32).reshape(len(chunk), -1)
    if normalization == "l2":
        row_norms(rows, name, start)
    elif not np.isfinite(rows).all():
        first = start + int(np.argmin(np.isfinite(rows).all(axis=1)))
        raise DataError(f"{name} has non-finite values (first at row {first})")


def check_rows(x: np.ndarray, row_shape: tuple[int, ...], name: str) -> np.ndarray:
    """Checks that `x` is a batch of rows of `row_shape`.

    Raises:
      ValueError: naming `name`, the expected and the actual shape.
    """
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    if tuple(x.shape[1:]) != tuple(row_shape) or x.ndim != len(row_shape) + 1:
        raise ValueError(
            f"{name}: inputs must have shape [N, {', '.join(map(str, row_shape))}]; "
            f"got {list(x.shape)}"
        )
    return x


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A loaded run: its resolved config and its trained parts by name."""

    workdir: str
    trainer: str
    config: ml_collections.ConfigDict
    parts: Mapping[str, Encoder]

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in self.summary().items())
        return f"{type(self).__name__}({fields})"

    def summary(self) -> dict[str, Any]:
        """What the one-line repr shows: the workdir, the trainer, the step, the parts."""
        steps = sorted({encoder.step for encoder in self.parts.values()})
        return {
            "workdir": self.workdir,
            "trainer": self.trainer,
            "step": steps[0] if len(steps) == 1 else steps,
            "parts": list(self.parts),
        }

    def part(self, name: str | None = None) -> Encoder:
        """The part called `name` (None: the run's main part, the first one).

        Raises:
          LoadError: naming the parts this run has.
        """
        if name is None:
            return next(iter(self.parts.values()))
        if name not in self.parts:
            raise LoadError(
                f"{self.workdir}: this {self.trainer} run has no part {name!r} "
                f"(it has: {', '.join(self.parts)})"
            )
        return self.parts[name]


class Binarizer(Loaded):
    """A trained recurrent binarizer: `encode` to bit planes, `vectors` to codes."""

    @property
    def encoder(self) -> Encoder:
        """The float -> planes encoder."""
        return self.parts["binarizer"]

    @property
    def dim(self) -> int:
        """d, the embedding width it encodes."""
        return self.encoder.input_shape[0]

    @property
    def code_dim(self) -> int:
        """m, the code width."""
        return int(self.config.model.code_dim)

    @property
    def loops(self) -> int:
        """u: every code has u+1 bit planes."""
        return int(self.config.model.loops)

    def summary(self) -> dict[str, Any]:
        """The workdir, the step, d, m and u."""
        return {
            "workdir": self.workdir,
            "step": self.encoder.step,
            "d": self.dim,
            "m": self.code_dim,
            "u": self.loops,
        }

    def provenance(self) -> dict[str, Any]:
        """Where its codes come from: {"workdir" (absolute), "step", "m", "u"}."""
        return {
            "workdir": os.path.abspath(self.workdir),
            "step": self.encoder.step,
            "m": self.code_dim,
            "u": self.loops,
        }

    def encode(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """int8 bit planes [N, u+1, m] of +-1 of float embeddings [N, d] (any scale)."""
        return self.encoder(x, batch_size)

    @property
    def query_bits(self) -> int:
        """The query precision it was trained and evaluated for (0: queries as stored codes)."""
        return int(self.config.get("query_bits", 0))

    def encode_query(
        self, x: np.ndarray, batch_size: int = 4096, bits: int | None = None
    ) -> np.ndarray:
        """Query planes [N, planes, m] of float embeddings at a query precision.

        Args:
          x: float embeddings [N, d].
          batch_size: rows per batch.
          bits: 0 encodes the queries as stored codes (`encode`: u+1 planes);
            B >= 1 quantizes block W's pre-sign output to B bits per dimension
            (`models.binarizer.query_planes`: B planes, searched by cross-u
            SDC); None is `query_bits`.
        """
        bits = self.query_bits if bits is None else bits
        if bits == 0:
            return self.encode(x, batch_size)
        return np.asarray(query_planes(jnp.asarray(self.parts["logits"](x, batch_size)), bits))

    def vectors(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """The recurrent codes b = sum_i 2^-i s_i, float32 [N, m] (exact)."""
        return codes_lib.decode(self.encode(x, batch_size))


class Upgrade(Loaded):
    """A trained upgrade: `old` and `new` embedders and, for dmu and bict, `psi`."""

    @property
    def method(self) -> str:
        """The compatibility method the new model was trained with."""
        return str(self.config.method)

    @property
    def old(self) -> Encoder:
        """phi_old: inputs -> old embeddings."""
        return self.parts["old"]

    @property
    def new(self) -> Encoder:
        """phi_new: inputs -> new embeddings."""
        return self.parts["new"]

    def summary(self) -> dict[str, Any]:
        """The workdir, the method, the step and the parts."""
        return {**super().summary(), "method": self.method}

    def upgrade(self, stored: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """psi(stored old embeddings): the gallery moved to the new space, no raw data.

        Raises:
          LoadError: when the run's method has no forward adapter.
        """
        return self.part("psi")(stored, batch_size)


class Runs(dict):
    """The upgrades of a comparison or a sequence, by name."""

    def __repr__(self) -> str:
        return f"Runs({', '.join(self)})"


@dataclasses.dataclass(frozen=True, repr=False)
class Versions(Loaded):
    """A compatible-codes run: binarizers "old", "new", "independent", and psi.

    `parts` holds each binarizer's encoder and "psi" (old bit planes -> new
    bit planes: decode, the affine map, requantize); `binarizers` the three runs,
    each usable wherever a binarizer run is (encode, search, export).
    """

    binarizers: Mapping[str, Binarizer] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The workdir, the step(s), the parts and each binarizer's m and u."""
        codes = {name: f"m={run.code_dim}, u={run.loops}" for name, run in self.binarizers.items()}
        return {**super().summary(), "codes": codes}

    def binarizer(self, name: str) -> Binarizer:
        """The binarizer run `name` ("old", "new" or "independent").

        Raises:
          LoadError: naming the runs this one has.
        """
        if name not in self.binarizers:
            raise LoadError(
                f"{self.workdir}: no binarizer {name!r} (it has: {', '.join(self.binarizers)})"
            )
        return self.binarizers[name]

    def upgrade_codes(self, planes: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """New-version bit planes of stored old-version planes [N, u_old+1, m_old], no raw data."""
        return self.part("psi")(planes, batch_size)
