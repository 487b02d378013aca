"""A deterministic synthetic set of paired embeddings with shared latent structure.

Each pair comes from one latent point z = c_y + spread * e in R^k around one
of `num_clusters` centres c_y (y is the pair's label). A fixed random
two-layer map g(z) = tanh(z A) B lifts it to a curved k-dimensional manifold
in R^d, and each side adds its own isotropic noise:

    query = normalize(g(z) + noise * e_q),   doc = normalize(g(z) + noise * e_d)

With `siblings` s > 1, pairs come in items of s consecutive pairs that
share one query and one latent point, each with its own doc noise (MS-COCO's
5 captions per image): the pairs carry `groups`, the item of each.

`encoder` k > 0 gives another "model" of the same pairs: the same latents
and labels seen through its own random map (A_k, B_k) and its own noise, as
an old and a new embedding model see the same items. Two encoders' spaces
are unrelated (float search across them is at chance), like the embeddings
of two versions of a model.

Float cosine retrieval is far from perfect (the noise fills all d
dimensions while the signal lives on a k-dimensional manifold, and
neighbouring points of one cluster compete), so there is room both to lose
accuracy by binarizing and to gain it by training on the pairs.
"""

from __future__ import annotations

import numpy as np

from bebrjax.data.pairs import PairedEmbeddings, make_pairs
from bebrjax.errors import DataError


def get_data(
    num_pairs: int = 20000,
    dim: int = 128,
    latent_dim: int = 16,
    num_clusters: int = 100,
    spread: float = 0.6,
    noise: float = 1.2,
    seed: int = 0,
    encoder: int = 0,
    siblings: int = 1,
) -> PairedEmbeddings:
    """Generates `num_pairs` pairs of `dim`-d embeddings, the same for the same arguments.

    Args:
      num_pairs: N.
      dim: d, the embedding width.
      latent_dim: k, the dimension of the shared latent structure.
      num_clusters: how many clusters (and labels) the latents fall into.
      spread: standard deviation of a latent around its cluster centre.
      noise: per-coordinate noise of each side, relative to the signal's scale.
      seed: the generator's seed.
      encoder: which model sees the latents: 0 the default one; k > 0 draws its
        own map and noise from (seed, k), over the same latents and labels.
      siblings: pairs per item (the last item may have fewer); 1 gives no groups.

    Returns:
      Normalized `PairedEmbeddings` with cluster labels (and, with siblings > 1,
      groups).
    """
    if min(num_pairs, dim, latent_dim, num_clusters, siblings) <= 0:
        raise DataError(
            "synthetic data: num_pairs, dim, latent_dim, num_clusters and siblings must be > 0"
        )
    if encoder < 0:
        raise DataError(f"synthetic data: encoder={encoder} must be >= 0")
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_clusters, latent_dim))
    lift = rng.standard_normal((latent_dim, 2 * dim)) / np.sqrt(latent_dim)
    mix = rng.standard_normal((2 * dim, dim)) / np.sqrt(2 * dim)
    num_items = -(-num_pairs // siblings)
    labels = rng.integers(0, num_clusters, num_items)
    latent = centres[labels] + spread * rng.standard_normal((num_items, latent_dim))
    if encoder:
        rng = np.random.default_rng((seed, encoder))
        lift = rng.standard_normal(lift.shape) / np.sqrt(latent_dim)
        mix = rng.standard_normal(mix.shape) / np.sqrt(2 * dim)
    signal = np.tanh(latent @ lift) @ mix
    scale = noise * signal.std()
    query = signal + scale * rng.standard_normal(signal.shape)
    item = np.arange(num_pairs) // siblings
    doc = signal[item] + scale * rng.standard_normal((num_pairs, dim))
    return make_pairs(
        query[item].astype(np.float32),
        doc.astype(np.float32),
        labels[item],
        groups=item if siblings > 1 else None,
        source="synthetic",
    )
