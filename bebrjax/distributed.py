"""Runs on N processes with JAX's distributed runtime: start-up, batches, host results.

One process is the default and nothing here changes it. With N processes
(`jax.distributed`), every process runs the same program; the mesh
(`sharding.make_mesh`) spans all processes' devices, and:

- start-up (`initialize`, before anything touches a device) takes the
  coordinator address, the number of processes and this process's id from
  flags or from the environment (`JAX_COORDINATOR_ADDRESS`,
  `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), or, with `--distributed`, lets
  JAX detect the cluster (SLURM, TPU VMs, Open MPI). CPU collectives go
  through gloo.
- a global batch is built from each process's own rows (`local_rows`,
  `global_batch`, `jax.make_array_from_process_local_data`): process p
  reads rows [p B/N, (p+1) B/N) of a batch of B, which its devices hold, so
  no process reads the others' rows.
- results come back to every process's host whole (`to_host`), so each
  evaluates what one process would; only process 0 writes files
  (`is_primary`: `workdir.write_atomic`, the metrics log, plots, and
  checkpoints' bookkeeping), and the others wait for it where they read
  what it wrote (`barrier`).
- checkpoints are written and read by orbax collectively (every process
  calls save and restore) into one directory, which must be on a file
  system all processes share; a run resumes under the same process count.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from bebrjax.errors import ConfigError

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    detect: bool = False,
) -> None:
    """Starts JAX's distributed runtime when asked to; one process otherwise.

    Call before anything touches a device. Values not given come from the
    environment (`ENV`). With none given anywhere and `detect` False it
    does nothing: one process, as without this call.

    Args:
      coordinator: "host:port" of process 0's coordination service.
      num_processes: how many processes the run has.
      process_id: this process's id, 0..num_processes-1.
      detect: let JAX detect the cluster (SLURM, TPU VM, Open MPI) for the
        values not given.

    Raises:
      ConfigError: when only some of the three are given, or they are out of
        range, naming the flag and its environment variable.
    """
    env = [os.environ.get(name) or None for name in ENV]
    coordinator = coordinator or env[0]
    num_processes = num_processes if num_processes is not None else _int(env[1], ENV[1])
    process_id = process_id if process_id is not None else _int(env[2], ENV[2])
    given = (coordinator, num_processes, process_id)
    if not detect and all(v is None for v in given):
        return
    if not detect and None in given:
        missing = [
            f"--{flag} (or {var})"
            for flag, var, value in zip(
                ("coordinator", "num_processes", "process_id"), ENV, given, strict=True
            )
            if value is None
        ]
        raise ConfigError(
            f"a multi-process start needs {', '.join(missing)} as well, or --distributed "
            "to detect the cluster"
        )
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"--num_processes={num_processes}: must be >= 1")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ConfigError(f"--process_id={process_id}: must be in [0, {num_processes})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def _int(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: not an integer") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The start-up flags of `initialize` on an argparse command."""
    group = parser.add_argument_group("multi-process start-up (default: one process)")
    group.add_argument("--coordinator", help="host:port of process 0 (or JAX_COORDINATOR_ADDRESS)")
    group.add_argument("--num_processes", type=int, help="processes in all (or JAX_NUM_PROCESSES)")
    group.add_argument("--process_id", type=int, help="this process's id (or JAX_PROCESS_ID)")
    group.add_argument(
        "--distributed", action="store_true", help="detect the cluster (SLURM, TPU VM, Open MPI)"
    )


def initialize_from(args: argparse.Namespace) -> None:
    """`initialize` from the flags of `add_arguments`."""
    initialize(args.coordinator, args.num_processes, args.process_id, detect=args.distributed)


def exit_now(status: int) -> None:
    """Ends this process with `status`; on N processes without the shutdown barrier.

    A process that stops on an error would otherwise wait at JAX's shutdown
    barrier for the others (5 minutes by default) before it exits; exiting
    at once lets a launcher (or the scheduler) stop the rest.
    """
    if jax.process_count() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def is_primary() -> bool:
    """Whether this is process 0, the one that writes files."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process gets here (a no-op on one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def local_rows(rows: np.ndarray) -> np.ndarray:
    """This process's part of a global batch's rows: the p-th of N equal slices.

    Raises:
      ConfigError: when the batch does not split evenly over the processes.
    """
    count, index = jax.process_count(), jax.process_index()
    if len(rows) % count:
        raise ConfigError(f"a batch of {len(rows)} rows does not split over {count} processes")
    size = len(rows) // count
    return rows[index * size : (index + 1) * size]


def global_batch(sharding: jax.sharding.Sharding, local: Any) -> Any:
    """The global arrays whose rows on this process's devices are `local` (a pytree)."""
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local
    )


def to_host(x: Any) -> Any:
    """A pytree of (possibly process-spanning) arrays as whole numpy arrays on every process."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, x)
    return multihost_utils.process_allgather(x, tiled=True)


def broadcast(value: int) -> int:
    """Process 0's integer `value`, on every process."""
    if jax.process_count() == 1:
        return value
    return int(allgather(np.int64(value))[0])


def allgather(x: Any) -> Any:
    """Each process's numpy pytree `x`, stacked on a new leading axis [N, ...], on every process.

    Every process must give arrays of the same shapes and dtypes. The bytes
    travel as they are, so int64 and float64 arrive whole (JAX's own
    gather would narrow them to 32 bits).
    """

    def gather(a: Any) -> np.ndarray:
        a = np.asarray(a)
        if jax.process_count() == 1:
            return a[None]
        raw = multihost_utils.process_allgather(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
        return np.asarray(raw).view(a.dtype).reshape(-1, *a.shape)

    return jax.tree.map(gather, x)
