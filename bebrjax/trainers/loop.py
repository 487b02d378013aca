"""The training loop every trainer shares: resume, step, log, checkpoint, progress.

A trainer builds its state and a jit'd `train_step(state, batch) -> (state,
metrics)`; `train_loop` restores the newest readable orbax checkpoint of
`workdir`, feeds the batches of `batch_fn(step)` (a pure function of the
step, so that resuming equals not stopping; on N processes each gives its
own rows, `distributed.local_rows`), writes metrics.jsonl and a
progress bar (whose rate and ETA leave out the first, compiling step:
`bebrjax.progress`), checkpoints on schedule and at the end, and records
its wall time in train_time.json (`workdir.train_time` reads the total and
the parts).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bebrjax import checkpoint, distributed, progress, sharding
from bebrjax import workdir as wd

State = dict[str, Any]


# The keys of a `train` section and their types (`config.check_fields`); the
# values are the config file's. steps 0: `epochs` epochs.
TRAIN_FIELDS = dict(
    batch_size=int,
    epochs=float,
    steps=int,
    log_every=int,
    checkpoint_every=int,
    keep_checkpoints=int,
)


def init_state(
    model: nn.Module, tx: optax.GradientTransformation, example: jax.Array, seed: int, mesh
) -> State:
    """A fresh train state for `model`, created directly in its replicated sharding.

    Args:
      model: a flax module taking `(x, train)`.
      tx: the optimizer.
      example: an input batch of the right shape and dtype (its values are unused).
      seed: the initialization seed.
      mesh: the device mesh.
    """

    def init(rng):
        variables = model.init(rng, example, train=False)
        params = variables["params"]
        return {
            "params": params,
            "batch_stats": variables.get("batch_stats", {}),
            "opt_state": tx.init(params),
            "step": jnp.zeros((), jnp.int32),
        }

    return jax.jit(init, out_shardings=sharding.replicated(mesh))(jax.random.key(seed))


def optimizer_step(
    state: State,
    tx: optax.GradientTransformation,
    loss_fn: Callable[[Any], tuple[jax.Array, tuple[dict[str, jax.Array], Any]]],
) -> tuple[State, dict[str, jax.Array]]:
    """One update of `state["params"]` by `tx` (inside a jit'd step).

    Args:
      state: holds params, batch_stats, opt_state and step (and anything else,
        which is carried over).
      tx: the optimizer.
      loss_fn: params -> (loss, ({term: value}, new batch_stats)).

    Returns:
      (the new state, {"loss", "grad_norm", and each term}).
    """
    (total, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"]
    )
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {
        **state,
        "params": optax.apply_updates(state["params"], updates),
        "batch_stats": batch_stats,
        "opt_state": opt_state,
        "step": state["step"] + 1,
    }
    return new_state, {"loss": total, "grad_norm": optax.tree.norm(grads), **terms}


def jit_train_step(step: Callable[..., tuple[State, Any]], mesh, frozen: Any = None):
    """`step(state, batch)` jit'd on the mesh: state replicated and donated, batch sharded.

    With `frozen` (the arrays of a model another is trained against), the
    step is `step(state, batch, frozen)` and `frozen` is an argument of the
    compiled program, put on the devices once, not a value closed over
    (which XLA bakes into the program as constants: a larger program,
    compiled again for every model). The returned function takes (state, batch).
    """
    rep, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    if frozen is None:
        return jax.jit(step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)
    jitted = jax.jit(
        step, in_shardings=(rep, data, rep), out_shardings=(rep, rep), donate_argnums=0
    )
    frozen = jax.device_put(frozen, rep)
    return lambda state, batch: jitted(state, batch, frozen)


def cadence(train: Any) -> dict[str, int]:
    """`train_loop`'s log_every, checkpoint_every and keep_checkpoints from a `train` section."""
    return {k: train[k] for k in ("log_every", "checkpoint_every", "keep_checkpoints")}


class Laps:
    """Wall seconds of named phases: `laps("stage")` closes the phase that ends now."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        """Records the seconds since the last call (or creation) as phase `name`."""
        now = time.perf_counter()
        self.seconds[name], self._clock = round(now - self._clock, 1), now


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Ctrl-C (SIGINT) as a flag to check at a safe point, rather than an exception anywhere.

    Yields a function telling whether Ctrl-C was pressed; a second Ctrl-C
    interrupts at once, as usual. Off the main thread (where no handler can
    be set), and on N processes (which must all stop at the same step), it
    never reports one and Ctrl-C interrupts at once.
    """
    pressed = []
    if threading.current_thread() is not threading.main_thread() or jax.process_count() > 1:
        yield lambda: False
        return

    def handler(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(pressed)
    finally:
        signal.signal(signal.SIGINT, previous)


def train_loop(
    state: State,
    train_step: Callable[[State, Any], tuple[State, dict[str, jax.Array]]],
    batch_fn: Callable[[int], dict[str, np.ndarray]],
    *,
    workdir: str,
    total: int,
    schedule: optax.Schedule,
    mesh,
    log_every: int,
    checkpoint_every: int,
    keep_checkpoints: int,
    stop_after_steps: int | None = None,
    hook: Callable[[int, State], State] | None = None,
) -> State | None:
    """Runs (or resumes) `total` steps of `train_step`, checkpointing to `workdir`.

    Resumes from the newest checkpoint that reads (`checkpoint.restore_latest`).
    Each call that runs steps adds a part (start step, end step, seconds) to
    workdir/train_time.json, updated at every checkpoint and at the end.

    Args:
      state: a fresh state in its target sharding (the template to restore into);
        it must hold an int "step".
      train_step: the jit'd step.
      batch_fn: this process's rows of the batch of a step (all of it on one
        process; `distributed.local_rows`).
      workdir: where checkpoints/, metrics.jsonl and train_time.json go.
      total: the number of steps of the schedule.
      schedule: the learning rate per step, for the log.
      mesh: the device mesh; batches are sharded over its `data` axis.
      log_every: steps between metrics lines.
      checkpoint_every: steps between checkpoints.
      keep_checkpoints: checkpoints kept.
      stop_after_steps: run at most this many steps in this call, then save
        and return None, as a preempted job would; the next call resumes.
      hook: called as `state = hook(step, state)` before each step.

    Returns:
      The final state, or None when stopped before the end.
    """
    directory = os.path.join(workdir, "checkpoints")
    state = checkpoint.restore_latest(directory, state) or state
    distributed.barrier("train_loop.restored")  # all have looked before the manager creates
    mngr = checkpoint.manager(directory, every=checkpoint_every, keep=keep_checkpoints)
    start = int(state["step"])
    end = total if stop_after_steps is None else min(total, start + stop_after_steps)
    log = wd.MetricsLog(workdir, start)
    clock = wd.TrainTime(workdir, start)
    put = functools.partial(distributed.global_batch, sharding.batch_sharded(mesh))
    bar = progress.Bar(  # its rate and ETA leave out the compiling first step
        total=total,
        initial=start,
        desc=os.path.basename(workdir) or "train",
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0,
        disable=not distributed.is_primary(),
    )
    tick, tick_step = time.perf_counter(), start
    with deferred_interrupt() as interrupted:
        for step in range(start, end):
            if hook is not None:
                state = hook(step, state)
            state, metrics = train_step(state, put(batch_fn(step)))
            done = step + 1
            if checkpoint.save(mngr, done, state, force=done in (end, total)):
                clock.update(done)
            if done % log_every == 0 or done == total:  # a stop mid-interval logs nothing extra
                record = {k: float(v) for k, v in metrics.items()}
                now = time.perf_counter()
                rate = (done - tick_step) / (now - tick)
                record.update(step=done, lr=float(schedule(step)), steps_per_sec=rate)
                tick, tick_step = now, done
                log.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
            bar.update(1)
            if interrupted():  # Ctrl-C, at a step's end: a checkpoint being written finishes
                bar.close()
                mngr.wait_until_finished()
                mngr.close()
                raise KeyboardInterrupt
    bar.close()
    mngr.wait_until_finished()
    mngr.close()
    if end > start:  # a call with nothing left to train (a finished run run again) adds no part
        clock.update(end)
    return state if end == total else None


def variables_of(state: State) -> dict[str, Any]:
    """The flax variables (params and batch statistics) of a train state."""
    return {"params": state["params"], "batch_stats": state["batch_stats"]}
