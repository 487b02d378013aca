"""The forward adapter psi: old embedding space -> new embedding space.

DMU and BiCT both evolve the stored gallery instead of re-encoding it: psi
maps an old-model embedding (never raw data) to the new model's space, and
the gallery becomes psi(G_old). psi is a light residual MLP:

    h = x
    for each block:  h = L(h) + MLP(h)     (L: the width-fitting identity at init,
                                             MLP's last Linear starts at zero)
    psi(x) = l2_normalize(h)

At initialization psi is exactly the width fitting that the compatibility
losses and cross-model search use: the identity when widths match, the
old embedding zero-padded (or truncated) to the new width otherwise. So an
untrained psi searches like new->old, and training only has to learn the
correction. `upgrade_gallery` applies psi to a stored gallery batch by
batch, jit'd and sharded over the mesh like any model.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bebrjax.models.binarizer import MLPBlock
from bebrjax.models.common import l2_normalize
from bebrjax.sharding import apply_model


def fitting_init(key: jax.Array, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
    """The [in, out] matrix that zero-pads (or truncates) a row to `out` columns."""
    del key
    return jnp.eye(*shape, dtype=dtype)


class Adapter(nn.Module):
    """psi: `blocks` residual MLP blocks to width `features`, unit-norm output.

    Attributes:
      features: the new embedding width.
      hidden: width of the MLP branch (0 means 2 x max(in, features)).
      depth: Linear-BN-ReLU layers in each block's branch.
      blocks: residual blocks; the first fits the width, the rest are square.
    """

    features: int
    hidden: int = 0
    depth: int = 1
    blocks: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Maps old embeddings [N, d_old] to new-space embeddings [N, features]."""
        hidden = self.hidden or 2 * max(x.shape[-1], self.features)
        for i in range(self.blocks):
            x = MLPBlock(
                self.features, hidden, self.depth, skip_init=fitting_init, name=f"block{i}"
            )(x, train)
        return l2_normalize(x)


def upgrade_gallery(
    adapter: nn.Module, variables: dict, gallery: np.ndarray, mesh, batch_size: int = 4096
) -> np.ndarray:
    """psi(gallery): the stored old embeddings moved to the new space, batch by batch.

    Args:
      adapter: the `Adapter`.
      variables: its trained variables (params and batch statistics).
      gallery: [N, d_old] stored embeddings (a memory-mapped array works; only
        one batch at a time is on the devices).
      mesh: the device mesh the batches are sharded over.
      batch_size: rows per batch (rounded up to a multiple of the devices).

    Returns:
      [N, features] float32, unit rows.
    """
    return apply_model(adapter, variables, gallery, mesh, batch_size)


class WithAdapter(nn.Module):
    """A new embedding model and its forward adapter, trained together (DMU).

    `__call__(x, train, labels, old)` returns the model's outputs and, when
    `old` (old-model embeddings of the same batch) is given, "adapted":
    psi(old). Parameters live under "model" and "adapter" (see `split_variables`).

    Attributes:
      model: the new embedding model (`embedder.Model`).
      adapter: psi.
      old_dim: width of the old embeddings (to build psi at initialization).
    """

    model: nn.Module
    adapter: Adapter
    old_dim: int

    def __call__(
        self,
        x: jax.Array,
        train: bool = False,
        labels: jax.Array | None = None,
        old: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """The model's {"embedding", "logits"}, plus "adapted" when `old` is given."""
        out = dict(self.model(x, train, labels))
        if old is None and self.is_initializing():
            old = jnp.zeros((x.shape[0], self.old_dim), jnp.float32)
        if old is not None:
            out["adapted"] = self.adapter(old, train)
        return out


def split_variables(variables: dict) -> tuple[dict, dict]:
    """A `WithAdapter`'s variables as (the model's, the adapter's)."""
    return tuple(
        {collection: tree[name] for collection, tree in variables.items() if name in tree}
        for name in ("model", "adapter")
    )
