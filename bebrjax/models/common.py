"""What every model (and the losses) share: the initializer and the row normalization."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's xavier_normal_ (flax's glorot_normal is truncated).
xavier_normal = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Scales each row of `x` to unit L2 norm."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))
