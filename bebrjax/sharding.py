"""Device mesh and shardings: the batch split on `data`, parameters replicated.

`batched_apply` runs a jit'd function over a host array batch by batch on the mesh;
`apply_model` is that for a flax model in eval mode (evaluation embeddings,
binary codes, gallery upgrades). On a mesh over several processes
(`bebrjax.distributed`) each process gives its own rows of every batch and
the results come back whole to every process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bebrjax import distributed
from bebrjax.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(num_devices: int = 0) -> Mesh:
    """A one-axis (`data`) mesh over the first `num_devices` devices.

    Args:
      num_devices: how many devices to use; 0 means all of them.

    On several processes the mesh spans every process's devices, and only
    0 (all of them) can be asked for.

    Raises:
      ConfigError: when more devices are asked for than exist, or a part of
        a multi-process run's devices.
    """
    devices = jax.devices()
    if num_devices < 0 or num_devices > len(devices):
        raise ConfigError(
            f"config key 'mesh.num_devices' = {num_devices}: {len(devices)} devices are available"
        )
    if jax.process_count() > 1 and num_devices not in (0, len(devices)):
        raise ConfigError(
            f"config key 'mesh.num_devices' = {num_devices}: a run on {jax.process_count()} "
            f"processes uses all {len(devices)} devices (0)"
        )
    chosen = devices[: num_devices or len(devices)]
    return Mesh(np.asarray(chosen), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def process_mesh(mesh: Mesh) -> Mesh:
    """The part of `mesh` on this process's devices (`mesh` itself on one process)."""
    if jax.process_count() == 1:
        return mesh
    mine = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    return Mesh(np.asarray(mine), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of anything every device holds whole (parameters, state)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch: leading axis split over `data`."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raises ConfigError unless the batch divides evenly over the data axis."""
    n = mesh.shape[DATA_AXIS]
    if batch_size % n:
        raise ConfigError(
            f"config key 'train.batch_size' = {batch_size}: not divisible by the {n} devices "
            "of the mesh"
        )


def sharded_apply(
    fn: Callable[[Any, jax.Array], Any], mesh, batch_size: int
) -> Callable[[Any, np.ndarray], Any]:
    """`apply(variables, chunk)`: jit'd `fn` on one host chunk of at most `batch_size` rows.

    The batch size is rounded up to a multiple of the devices and every chunk
    is padded to it (one compiled shape). The result stays on the devices
    (dispatch is asynchronous) with the padding still in it: its first
    `len(chunk)` rows are the answer. `chunk` is the same on every process;
    each puts only its own rows on its devices.
    """
    devices = mesh.shape[DATA_AXIS]
    batch_size = -(-batch_size // devices) * devices
    jitted = jax.jit(
        fn,
        in_shardings=(replicated(mesh), batch_sharded(mesh)),
        out_shardings=batch_sharded(mesh),
    )

    def apply(variables: Any, chunk: np.ndarray) -> Any:
        pad = [(0, batch_size - len(chunk))] + [(0, 0)] * (chunk.ndim - 1)
        padded = np.pad(chunk, pad)
        if jax.process_count() == 1:
            return jitted(variables, padded)
        rows = distributed.local_rows(np.arange(batch_size))
        return jitted(variables, distributed.global_batch(batch_sharded(mesh), padded[rows]))

    apply.batch_size = batch_size
    return apply


def batched_apply(
    fn: Callable[[Any, jax.Array], Any], variables: Any, x: np.ndarray, mesh, batch_size: int
) -> Any:
    """`fn(variables, batch)` over `x` in batches on the mesh, as numpy (see `sharded_apply`)."""
    apply = sharded_apply(fn, mesh, batch_size)
    out = [
        distributed.to_host(apply(variables, x[start : start + apply.batch_size]))
        for start in range(0, len(x), apply.batch_size)
    ]
    return jax.tree.map(lambda *parts: np.concatenate(parts)[: len(x)], *out)


def apply_model(
    model: Any, variables: Any, x: np.ndarray, mesh, batch_size: int, output: str = ""
) -> Any:
    """A flax model in eval mode (`train=False`) over `x`, batch by batch, as numpy.

    Args:
      model: the module (an embedder, a binarizer, psi).
      variables: its variables.
      x: the host inputs (a memory-mapped array works).
      mesh: the device mesh.
      batch_size: rows per batch.
      output: the entry of the model's output dict to keep ("" keeps it all).
    """

    def apply(v: Any, xb: jax.Array) -> Any:
        out = model.apply(v, xb, train=False)
        return out[output] if output else out

    return batched_apply(apply, variables, x, mesh, batch_size)
