"""An embedding model for upgrades: backbone -> embedding head -> classifier head.

`Model(...)(x, train, labels)` returns {"embedding": [N, d_emb] unit vectors,
"logits": [N, C]}. Old and new models may differ in backbone, width and
embedding dimension.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax

from bebrjax.models.backbones import BACKBONES
from bebrjax.models.heads import Classifier, EmbeddingHead


class Model(nn.Module):
    """Backbone, embedding head and classifier.

    Attributes:
      backbone: "mlp" or "resnet".
      backbone_args: keyword arguments of the backbone (e.g. widths, stage_sizes, width).
      embedding_dim: d_emb.
      num_classes: C of the classifier.
      classifier: "linear", "cosine", "arcface" or "cosface".
      scale: s of the normalized classifiers.
      margin: ArcFace / CosFace margin.
      embedding_bn: BatchNorm in the embedding head.
    """

    backbone: str = "mlp"
    backbone_args: Mapping[str, Any] = None
    embedding_dim: int = 64
    num_classes: int = 10
    classifier: str = "cosine"
    scale: float = 16.0
    margin: float = 0.0
    embedding_bn: bool = True

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, labels: jax.Array | None = None
    ) -> dict[str, jax.Array]:
        """Embeddings and logits of a batch."""
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone {self.backbone!r}: expected one of {', '.join(BACKBONES)}")
        features = BACKBONES[self.backbone](**dict(self.backbone_args or {}), name="backbone")(
            x, train
        )
        embedding = EmbeddingHead(self.embedding_dim, self.embedding_bn, name="embed")(
            features, train
        )
        logits = Classifier(
            self.num_classes, self.classifier, self.scale, self.margin, name="classifier"
        )(embedding, labels if train else None)
        return {"embedding": embedding, "logits": logits}
