"""Device mesh and shardings: the batch split on `data`, parameters replicated."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bebrjax.config import ConfigError

DATA_AXIS = "data"


def make_mesh(num_devices: int = 0) -> Mesh:
    """A one-axis (`data`) mesh over the first `num_devices` devices.

    Args:
      num_devices: how many devices to use; 0 means all of them.

    Raises:
      ConfigError: when more devices are asked for than exist.
    """
    devices = jax.devices()
    if num_devices < 0 or num_devices > len(devices):
        raise ConfigError(
            f"config key 'mesh.num_devices' = {num_devices}: {len(devices)} devices are available"
        )
    chosen = devices[: num_devices or len(devices)]
    return Mesh(np.asarray(chosen), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


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
