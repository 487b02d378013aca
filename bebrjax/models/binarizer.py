"""BEBR's recurrent binarizer: float embeddings to u+1 bit planes per dimension.

    b = sign(W(x))
    for i in 1..u:
        f = l2_normalize(B_i(b))      # reconstruct x from the code so far
        r = sign(R_i(x - f))          # binarize the residual
        b = b + 2^-i r

The code is the weighted sum b = sum_i 2^-i s_i of its bit planes s_i in {-1, +1}^m,
so every coordinate lies in {sum_i +-2^-i} (u = 1: {+-1.5, +-0.5}) and the whole
code takes m(u+1) bits. The blocks learn only through the retrieval loss (no
reconstruction loss), as in the authors' code.

Choices where the paper leaves room:
  * `sign(0)` is +1 (torch's `sign(0) = 0` would leave a coordinate outside the
    code alphabet), so planes are always exactly +-1.
  * The backward pass of `sign` is the straight-through estimator of the
    authors' code: the gradient passes where |input| <= 1 and is zero elsewhere.
  * `binarize=False` replaces sign by the identity: the same architecture as a
    float transform, the reference's fine-tuned "float" baseline.
  * With `center` (the configs' choice), each plane is the sign of its
    block's output less that output's per-coordinate mean (`Center`: the
    batch's in training, a running average in eval): every bit's threshold
    sits at its coordinate's mean, and no gradient can move it. Without it,
    one common offset per coordinate (which the MLP branch moves with a very
    large gain, its BatchNorm-ReLU features sharing a mean) makes bits
    constant over the whole set, and on weak pairs the top-K hard-negative
    loss pulls every code there: identical codes score log(K+1) per
    direction, below a code whose positives lose to their hard negatives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from bebrjax.models.common import l2_normalize, xavier_normal


@jax.custom_vjp
def sign_ste(x: jax.Array) -> jax.Array:
    """Sign with values in {-1, +1} (0 maps to +1); straight-through gradient on |x| <= 1."""
    return jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype)


def _sign_fwd(x):
    return sign_ste(x), x


def _sign_bwd(x, g):
    return (jnp.where(jnp.abs(x) <= 1.0, g, jnp.zeros_like(g)),)


sign_ste.defvjp(_sign_fwd, _sign_bwd)


def lift_init(key: jax.Array, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
    """A fixed near-isometry of `shape` (in, out), the same whatever `key`.

    The identity when in == out; otherwise the orthonormal columns Q (or rows
    Q^T) of one fixed random matrix, so a d->m block and an m->d block get
    transposes of each other: reconstructing from the code inverts the lift.
    """
    del key
    rows, cols = shape
    if rows == cols:
        return jnp.eye(rows, dtype=dtype)
    gauss = jax.random.normal(jax.random.key(0), (max(shape), min(shape)), jnp.float32)
    q, _ = jnp.linalg.qr(gauss)
    return (q if rows >= cols else q.T).astype(dtype)


class MLPBlock(nn.Module):
    """`depth` x (Linear -> BatchNorm -> ReLU), then Linear; depth 0 is one Linear.

    Weights are xavier-normal and biases zero, as in the reference code.
    BatchNorm follows PyTorch's defaults (momentum 0.1, epsilon 1e-5).

    With `skip`, the block also has a linear path initialized by `lift_init`
    and the MLP's last Linear starts at zero, so the block starts as a fixed
    near-isometry and the MLP learns a correction (depth 0: the one Linear
    starts as the lift). `skip_init` sets that linear path's initializer.
    """

    features: int
    hidden: int
    depth: int = 1
    skip: bool = True
    skip_init: Callable = lift_init

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps [N, in] to [N, features]."""
        linear = nn.Dense(
            self.features, kernel_init=self.skip_init if self.skip else xavier_normal, name="linear"
        )
        if self.depth == 0:
            return linear(x)
        h = x
        for _ in range(self.depth):
            h = nn.Dense(self.hidden, kernel_init=xavier_normal)(h)
            h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(h)
            h = nn.relu(h)
        if not self.skip:
            return linear(h)
        return linear(x) + nn.Dense(self.features, kernel_init=nn.initializers.zeros)(h)


class BinarizerOutput(NamedTuple):
    """What the binarizer returns.

    Attributes:
      code: the recurrent vector b, [N, m] float32.
      planes: its bit planes s_0..s_u, [N, u+1, m] int8 of +-1 (None when
        `binarize=False`); code == sum_i 2^-i planes[:, i].
      logits: block W's output before the sign, [N, m] float32: the
        continuous first plane, which an asymmetric query uses
        (`query_planes`).
      prefixes: the codes of every budget, [N, u+1, m] float32: prefix j is
        sum_{i<=j} 2^-i s_i, the code a document stored at j loops has
        (the last is `code`); what a loss over every budget scores.
    """

    code: jax.Array
    planes: jax.Array | None
    logits: jax.Array | None = None
    prefixes: jax.Array | None = None


def query_planes(logits: jax.Array, bits: int) -> jax.Array:
    """A float query quantized to `bits` bits per dimension, as a recurrent code of `bits` planes.

    Each row is scaled so that its largest |coordinate| maps to L = 2^bits - 1
    and rounded to the nearest odd integer in [-L, L]. Those are exactly the
    values of 2^(bits-1) b for a recurrent code b = sum_i 2^-i s_i of `bits`
    planes (s_0 = the sign, each next plane the sign of what is left), so
    the quantized query is searched by cross-u SDC against any stored code,
    exactly; the row's scale does not change its ranking. `bits` = 1 is the
    sign alone.

    Args:
      logits: float [N, m].
      bits: 1..8 planes.

    Returns:
      int8 [N, bits, m] of +-1.
    """
    top = jnp.max(jnp.abs(logits), axis=-1, keepdims=True)
    level = 2**bits - 1
    scaled = logits / jnp.where(top > 0, top, 1.0) * level
    odd = jnp.clip(2 * jnp.round((scaled - 1) / 2) + 1, -level, level)
    planes, rest = [], odd
    for i in range(bits):
        sign = jnp.where(rest >= 0, 1.0, -1.0)
        planes.append(sign)
        rest = rest - sign * 2.0 ** (bits - 1 - i)
    return jnp.stack(planes, axis=1).astype(jnp.int8)


class Center(nn.Module):
    """Subtracts the per-coordinate mean of [N, m] (in eval a running average of it).

    The batch's mean in training; in eval its running average, updated as
    `MLPBlock`'s BatchNorm updates its own (momentum 0.9). In training,
    adding a constant to every row changes neither the output nor the loss,
    so no gradient moves a bit's threshold.
    """

    momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """X less its (batch or running) mean per coordinate."""
        mean = self.variable("batch_stats", "mean", jnp.zeros, x.shape[-1:], jnp.float32)
        if not train:
            return x - mean.value
        batch_mean = jnp.mean(x, axis=0)
        if not self.is_initializing():
            step = (1.0 - self.momentum) * (jax.lax.stop_gradient(batch_mean) - mean.value)
            mean.value = mean.value + step
        return x - batch_mean


class Model(nn.Module):
    """The recurrent binarizer (BEBR).

    Attributes:
      code_dim: m, the width of every bit plane.
      loops: u, the number of residual loops; the code has u+1 bits per dimension.
      hidden: width of the MLP blocks' hidden layers (0 means max(d, m)).
      depth: number of Linear-BN-ReLU layers before each block's last Linear.
      binarize: False swaps sign for the identity (the float baseline).
      skip: give every block a linear skip path (see `MLPBlock`); the
        untrained binarizer is then the recurrent scalar quantizer of a fixed
        isometry of its input, which already keeps most of the float ranking.
      center: threshold every sign at its coordinate's mean (`Center`);
        False, the models saved before it, thresholds at 0.
    """

    code_dim: int
    loops: int = 1
    hidden: int = 0
    depth: int = 1
    binarize: bool = True
    skip: bool = True
    center: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> BinarizerOutput:
        """Encodes [N, d] embeddings (L2-normalized) into codes of width m."""
        if self.loops < 0:
            raise ValueError(f"loops must be >= 0, got {self.loops}")
        dim = x.shape[-1]
        hidden = self.hidden or max(dim, self.code_dim)
        quantize = sign_ste if self.binarize else (lambda v: v)

        def block(features, name):
            return MLPBlock(features, hidden, self.depth, self.skip, name=name)

        def presign(features, name, v):
            h = block(features, name)(v, train)
            return Center(name=f"{name}_center")(h, train) if self.center and self.binarize else h

        logits = presign(self.code_dim, "w", x)
        plane = quantize(logits)
        planes = [plane]
        code = plane
        prefixes = [code]
        for i in range(1, self.loops + 1):
            recon = l2_normalize(block(dim, f"b{i}")(code, train))
            plane = quantize(presign(self.code_dim, f"r{i}", x - recon))
            planes.append(plane)
            code = code + 2.0**-i * plane
            prefixes.append(code)
        prefixes = jnp.stack(prefixes, axis=1)
        if not self.binarize:
            return BinarizerOutput(code, None, logits, prefixes)
        planes = jnp.stack(planes, axis=1).astype(jnp.int8)
        return BinarizerOutput(code, planes, logits, prefixes)
