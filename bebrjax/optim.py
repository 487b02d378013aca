"""Optimizers and learning-rate schedules built from a config's `optim` section with optax."""

from __future__ import annotations

import jax
import ml_collections
import optax

from bebrjax.errors import ConfigError

# The keys of an `optim` section and their types (`config.check_fields`); the
# values are the config file's.
OPTIM_FIELDS = dict(
    name=str,
    lr=float,
    momentum=float,
    nesterov=bool,
    weight_decay=float,
    clip_norm=float,
    schedule=str,
    decay_at=tuple,
    decay_factor=float,
    warmup_steps=int,
)


def decay_mask(params):
    """True for weight matrices; biases and normalization parameters get no decay."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """The learning rate per step.

    `schedule="step"` multiplies `lr` by `decay_factor` at each fraction of
    training in `decay_at` (BEBR's reference: x0.1 at epoch 6 of 10, i.e. 0.6);
    `schedule="cosine"` decays to zero. `warmup_steps` ramps up linearly first.
    """
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    rest = max(total_steps - warmup, 1)
    if config.schedule == "step":
        boundaries = {
            max(int(frac * total_steps) - warmup, 1): config.decay_factor
            for frac in config.decay_at
        }
        main = optax.piecewise_constant_schedule(config.lr, boundaries)
    elif config.schedule == "cosine":
        main = optax.cosine_decay_schedule(config.lr, rest)
    elif config.schedule == "constant":
        main = optax.constant_schedule(config.lr)
    else:
        raise ConfigError(
            f"config key 'optim.schedule' = {config.schedule!r}: expected 'step', 'cosine' "
            "or 'constant'"
        )
    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, config.lr, warmup), main], [warmup])


def make_optimizer(
    config: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer named by `config.name` ('sgd' or 'adamw') and its schedule.

    Both clip the global gradient norm at `clip_norm` first (0 disables) and
    decay only weight matrices. 'sgd' is the BEBR reference recipe: Nesterov
    momentum with weight decay added to the gradient, as in torch.optim.SGD.
    """
    schedule = make_schedule(config, total_steps)
    clip = [optax.clip_by_global_norm(config.clip_norm)] if config.clip_norm > 0 else []
    if config.name == "sgd":
        tail = [
            optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
            optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov),
        ]
    elif config.name == "adamw":
        tail = [optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask)]
    else:
        raise ConfigError(f"config key 'optim.name' = {config.name!r}: expected 'sgd' or 'adamw'")
    return optax.chain(*clip, *tail), schedule
