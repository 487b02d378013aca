"""What a run trained, loaded back: `load(workdir)` gives plain numpy-in, numpy-out objects.

    model = bebrjax.inference.load("/tmp/bebr_demo")      # a binarizer run
    planes = model.encode(x)            # int8 [N, u+1, m] bit planes of +-1
    vectors = model.vectors(x)          # float32 [N, m], the recurrent codes b

    upgrade = bebrjax.inference.load("/tmp/upgrade_bict")  # an upgrade run
    gallery = upgrade.old(x_gallery)    # phi_old embeddings
    queries = upgrade.new(x_queries)    # phi_new embeddings
    upgraded = upgrade.upgrade(gallery) # psi(stored old embeddings) (dmu, bict)

Which trainers load (`LOADERS`, looked up by config.json's `trainer`):
  * `binarizer`: one part, "binarizer".
  * `upgrade`: parts "old", "new" and, for dmu and bict, "psi".
  * `upgrade_compare`: a `Runs` of every method's `upgrade` run by name.
Anything else is a `LoadError` naming the trainer.

A run is loadable once it has finished (its results.json is written); the
latest checkpoint of each stage is restored. `step=` loads an earlier kept
checkpoint instead, finished or not. Checkpoints restore onto the devices
present now, whatever mesh wrote them (`checkpoint.restore_any`).

Input handling is the training data's: a binarizer was trained on
L2-normalized float32 embeddings (the loaders normalize every row), so its
encoder casts to float32 and divides each row by its norm first, inside
the compiled function (the exported bundle carries the same step). Upgrade
models take the labelled data's `x` as it is stored (float32 features, or
uint8 images that the backbone scales), and psi the stored old embeddings.
The normalization is the same operation as the loaders' numpy division; run
inside XLA it can differ from numpy's in the last bit of a float, which
flipped one code in 200,000 rows in a measurement (README, "From training to
serving").
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from bebrjax import checkpoint, sharding
from bebrjax.data.pairs import DataError, row_norms
from bebrjax.search import codes as codes_lib


class LoadError(ValueError):
    """A workdir (or checkpoint step) that cannot be loaded; the message says why."""


def l2_normalize_rows(x: jax.Array) -> jax.Array:
    """float32 x / ||x|| per row, as the data loaders do; an all-zero row stays zero."""
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
        input handling included (see the module docstring).
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
          ValueError: when the rows have the wrong shape; DataError (a
            ValueError) at the first non-finite row, or all-zero row when
            the input is L2-normalized.
        """
        x = check_rows(x, self.input_shape, self.name)
        if np.issubdtype(x.dtype, np.floating):
            for start in range(0, len(x), batch_size):
                check_values(
                    x[start : start + batch_size], self.normalization, f"{self.name} input", start
                )
        return sharding.batched_apply(self.forward, self.variables, x, self.mesh, batch_size)

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

    def encode(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """int8 bit planes [N, u+1, m] of +-1 of float embeddings [N, d] (any scale)."""
        return self.encoder(x, batch_size)

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

    def upgrade(self, stored: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """psi(stored old embeddings): the gallery moved to the new space, no raw data.

        Raises:
          LoadError: when the run's method has no forward adapter.
        """
        return self.part("psi")(stored, batch_size)


class Runs(dict):
    """The runs of a comparison, by name (`load` of each run's directory)."""


def _read_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.isdir(workdir):
        raise LoadError(f"{workdir}: no such directory")
    if not os.path.isfile(path):
        raise LoadError(f"{workdir}: not a bebrjax workdir (no config.json)")
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoadError(f"{path}: not valid JSON ({e})") from None


def _restore(directory: str, step: int | None, mesh: Mesh, finished: bool, workdir: str):
    """(step, flax variables) of a stage directory's checkpoint."""
    kept = checkpoint.steps(os.path.join(directory, "checkpoints"))
    if step is None:
        if not finished:
            raise LoadError(
                f"{workdir}: the run has not finished (no results.json); pass a step to load "
                f"an intermediate checkpoint (kept: {', '.join(map(str, kept)) or 'none'})"
            )
        if not kept:
            raise LoadError(f"{directory}: no finished checkpoint")
        step = kept[-1]
    elif step not in kept:
        raise LoadError(
            f"{directory}: no checkpoint at step {step} "
            f"(kept: {', '.join(map(str, kept)) or 'none'})"
        )
    state = checkpoint.restore_any(
        os.path.join(directory, "checkpoints"), step, sharding.replicated(mesh)
    )
    return step, {"params": state["params"], "batch_stats": state.get("batch_stats", {})}


def _load_binarizer(workdir, config, step, mesh, finished) -> Binarizer:
    from bebrjax.trainers.binarizer import build_model

    step, variables = _restore(workdir, step, mesh, finished, workdir)
    model = build_model(config)
    dim = int(variables["params"]["w"]["linear"]["kernel"].shape[0])

    def forward(v, x):
        return model.apply(v, l2_normalize_rows(x), train=False).planes

    encoder = Encoder(
        "binarizer", "binarizer", forward, variables, (dim,), np.dtype(np.float32), "l2", step, mesh
    )
    return Binarizer(workdir, "binarizer", config, {"binarizer": encoder})


def _embedder(name, model: nn.Module, variables, example: np.ndarray, step, mesh) -> Encoder:
    def forward(v, x):
        return model.apply(v, x, train=False)["embedding"]

    return Encoder(
        name,
        "embedder",
        forward,
        variables,
        tuple(example.shape[1:]),
        np.dtype(np.float32 if example.dtype.kind == "f" else example.dtype),
        "none",
        step,
        mesh,
    )


def _load_upgrade(workdir, config, step, mesh, finished) -> Upgrade:
    from bebrjax.models.adapter import split_variables
    from bebrjax.trainers import upgrade

    data = upgrade.labelled_data(config)
    classes, example = data.num_classes, data.x[:1]
    old_dir = config.old_workdir or os.path.join(workdir, "old")
    old_step, old_vars = _restore(old_dir, None, mesh, True, workdir)  # always its final one
    new_step, new_vars = _restore(os.path.join(workdir, "new"), step, mesh, finished, workdir)
    parts = {
        "old": _embedder(
            "old", upgrade.build(config.old, classes), old_vars, example, old_step, mesh
        ),
    }
    psi_vars = psi_step = None
    if config.method == "dmu":
        new_vars, psi_vars = split_variables(new_vars)
        psi_step = new_step
    parts["new"] = _embedder(
        "new", upgrade.build(config.new, classes), new_vars, example, new_step, mesh
    )
    if config.method == "bict":
        psi_step, psi_vars = _restore(
            os.path.join(workdir, "forward"), step, mesh, finished, workdir
        )
    if psi_vars is not None:
        adapter = upgrade.build_adapter(config, config.new.model.embedding_dim)
        width = config.old.model.embedding_dim

        def forward(v, x):
            return adapter.apply(v, x.astype(jnp.float32), train=False)

        parts["psi"] = Encoder(
            "psi",
            "adapter",
            forward,
            psi_vars,
            (width,),
            np.dtype(np.float32),
            "none",
            psi_step,
            mesh,
        )
    return Upgrade(workdir, "upgrade", config, parts)


def _load_compare(workdir, config, step, mesh, finished) -> Runs:
    from bebrjax.trainers.upgrade_compare import method_configs

    if not finished:
        raise LoadError(f"{workdir}: the comparison has not finished (no results.json)")
    return Runs(
        {
            name: load(path, step, mesh)
            for name, (_, path) in method_configs(config, workdir).items()
        }
    )


# config.json's `trainer` -> loader(workdir, config, step, mesh, finished).
LOADERS: dict[str, Callable[..., Any]] = {
    "binarizer": _load_binarizer,
    "upgrade": _load_upgrade,
    "upgrade_compare": _load_compare,
}


def load(workdir: str, step: int | None = None, mesh: Mesh | None = None) -> Any:
    """Loads what the run in `workdir` trained onto the devices present.

    Args:
      workdir: a finished run's directory (config.json, checkpoints, results.json).
      step: a kept checkpoint step to load instead of the final one.
      mesh: the devices to hold the variables and run the encoders on
        (default: all of them, on a `data` axis).

    Returns:
      A `Binarizer`, an `Upgrade` or, for a comparison, `Runs`.

    Raises:
      LoadError: naming the workdir and the problem: no such directory, no
        config.json, an unfinished run, a step not kept, a trainer that has
        no loader.
    """
    config = _read_config(workdir)
    trainer = config.get("trainer")
    if trainer not in LOADERS:
        raise LoadError(
            f"{workdir}: runs of trainer {trainer!r} cannot be loaded "
            f"(loadable: {', '.join(LOADERS)})"
        )
    finished = os.path.isfile(os.path.join(workdir, "results.json"))
    return LOADERS[trainer](workdir, config, step, mesh or sharding.make_mesh(), finished)
