"""The real colour photos that ship with scikit-learn and scikit-image: the benchmarks' source images."""

from __future__ import annotations

import numpy as np
import skimage.data
from sklearn.datasets import load_sample_images

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def source_photos() -> list[np.ndarray]:
    """Nine RGB photos (uint8 H x W x 3), two from scikit-learn and seven from scikit-image."""
    return list(load_sample_images().images) + [getattr(skimage.data, name)() for name in SKIMAGE_PHOTOS]
