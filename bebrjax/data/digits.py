"""scikit-learn's bundled handwritten digits: 1797 images, 8x8, 10 classes.

A small real image set that needs no download. scikit-learn is an optional
extra (`pip install -e ".[digits]"`). Pixels (0..16) are scaled to uint8
0..255 and given a channel axis: [1797, 8, 8, 1] NHWC.
"""

from __future__ import annotations

import numpy as np

from bebrjax.data.labelled import Labelled, make_labelled
from bebrjax.errors import DataError


def get_data() -> Labelled:
    """Loads the digits as uint8 NHWC images with labels 0..9."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "the digits data set needs scikit-learn: pip install -e '.[digits]'"
        ) from None
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return make_labelled(images, digits.target, source="sklearn digits")
