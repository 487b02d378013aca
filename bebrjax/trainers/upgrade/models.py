"""The models of an upgrade: built from a stage's config, frozen once trained."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bebrjax.errors import ConfigError
from bebrjax.models.adapter import Adapter
from bebrjax.models.embedder import Model
from bebrjax.sharding import apply_model


def build(stage: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The embedding model of a stage's config (`old`, `new`, a sequence step)."""
    return Model(num_classes=num_classes, **stage.model.to_dict())


def build_adapter(config: ml_collections.ConfigDict, width: int) -> Adapter:
    """The adapter psi to the new embedding width, shaped by `config.forward`."""
    f = config.forward
    return Adapter(width, hidden=f.hidden, depth=f.depth, blocks=f.blocks)


def check_model(
    stage: ml_collections.ConfigDict, num_classes: int, example: np.ndarray, key: str
) -> None:
    """Builds a stage's model abstractly on an example batch.

    Raises:
      ConfigError: naming `key` when the model cannot be built (e.g. backbone
        arguments the backbone does not take).
    """
    try:
        jax.eval_shape(
            functools.partial(build(stage, num_classes).init, train=False),
            jax.random.key(0),
            jnp.zeros((2, *example.shape[1:]), example.dtype),
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key '{key}': the model cannot be built: {e}") from None


class Frozen:
    """A trained model another trains against: its variables, classifier and seen classes."""

    def __init__(
        self,
        stage: ml_collections.ConfigDict,
        model: nn.Module,
        variables: dict,
        seen: np.ndarray | None = None,
    ):
        self.model, self.variables, self.seen = model, variables, seen
        self.width = stage.model.embedding_dim

    def embed(self, x: np.ndarray, mesh, batch_size: int) -> np.ndarray:
        """The model's embeddings of `x`."""
        return apply_model(self.model, self.variables, x, mesh, batch_size, "embedding")

    @property
    def weights(self) -> np.ndarray:
        """The classifier [C, d]."""
        return np.asarray(self.variables["params"]["classifier"]["weights"])
