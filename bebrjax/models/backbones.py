"""Backbones for model upgrades: an MLP for feature vectors, a small ResNet for images."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bebrjax.models.common import xavier_normal


class MLP(nn.Module):
    """Dense -> BatchNorm -> ReLU for each width in `widths`; returns the last features."""

    widths: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps [N, d] features (or uint8 images, flattened and scaled) to [N, widths[-1]]."""
        if x.dtype == jnp.uint8:
            x = x.astype(jnp.float32) / 255.0
        x = x.reshape(x.shape[0], -1)
        for width in self.widths:
            x = nn.Dense(width, kernel_init=xavier_normal)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
            x = nn.relu(x)
        return x


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a projection shortcut when shapes change."""

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """One residual block."""

        def norm():
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)

        y = nn.Conv(self.features, (3, 3), self.stride, use_bias=False)(x)
        y = nn.relu(norm()(y))
        y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
        y = norm()(y)
        if x.shape[-1] != self.features or self.stride != 1:
            x = norm()(nn.Conv(self.features, (1, 1), self.stride, use_bias=False)(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """A small CIFAR-style ResNet for NHWC images.

    A 3x3 stem, then one stage per entry of `stage_sizes` (blocks per stage),
    widths `width * 2^stage`, stride 2 from the second stage on, and global
    average pooling. uint8 inputs are scaled to [0, 1].
    """

    stage_sizes: Sequence[int] = (1, 1, 1)
    width: int = 16

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps [N, H, W, C] images to [N, width * 2^(stages-1)] features."""
        if x.dtype == jnp.uint8:
            x = x.astype(jnp.float32) / 255.0
        x = nn.Conv(self.width, (3, 3), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x))
        for stage, blocks in enumerate(self.stage_sizes):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(self.width * 2**stage, stride)(x, train)
        return jnp.mean(x, axis=(1, 2))


BACKBONES = {"mlp": MLP, "resnet": ResNet}
