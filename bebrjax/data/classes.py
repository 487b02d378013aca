"""A deterministic synthetic labelled set with many classes and nonlinear structure.

Each class y has a centre c_y in a k-dimensional latent space; an item is
z = c_y + spread * e. A fixed random network lifts it to d features,

    x = sin(freq * z A) B + noise * e',

whose periodic first layer folds the latent space, so the classes are not
linearly separable in x and a wider, deeper model trained on more data
separates them clearly better than a small one on less: the regime where a
model upgrade pays off.
"""

from __future__ import annotations

import numpy as np

from bebrjax.data.labelled import Labelled, make_labelled
from bebrjax.errors import DataError


def get_data(
    num_classes: int = 100,
    per_class: int = 60,
    dim: int = 64,
    latent_dim: int = 12,
    spread: float = 0.35,
    freq: float = 1.5,
    noise: float = 0.3,
    seed: int = 0,
) -> Labelled:
    """Generates num_classes * per_class float32 feature vectors with labels.

    Args:
      num_classes: C.
      per_class: items per class.
      dim: d, the feature width.
      latent_dim: k, the latent dimension.
      spread: standard deviation of an item around its class centre.
      freq: frequency of the folding first layer (higher: more nonlinear).
      noise: feature noise relative to the signal's scale.
      seed: the generator's seed.
    """
    if min(num_classes, per_class, dim, latent_dim) <= 0:
        raise DataError("classes data: num_classes, per_class, dim and latent_dim must be > 0")
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, latent_dim))
    fold = rng.standard_normal((latent_dim, 4 * dim)) / np.sqrt(latent_dim)
    mix = rng.standard_normal((4 * dim, dim)) / np.sqrt(4 * dim)
    y = np.repeat(np.arange(num_classes), per_class)
    z = centres[y] + spread * rng.standard_normal((len(y), latent_dim))
    signal = np.sin(freq * z @ fold) @ mix
    x = signal + noise * signal.std() * rng.standard_normal(signal.shape)
    return make_labelled(x.astype(np.float32), y, source="classes")
