"""The scikit-learn digits: a tiny image set that ships with scikit-learn, for offline smoke runs.

1,797 grey-scale 8x8 images of hand-written digits with pixel values 0..16. They need no download,
so the smoke/demo protocol and the tests can run end to end on any machine.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from bench.data.imageset import ImageSet

logger = logging.getLogger(__name__)

DIGITS_MAX_VALUE = 16
DIGITS_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))


def load_digits_smoke() -> ImageSet:
    """All 1,797 scikit-learn digits as uint8 (N, 1, 8, 8) pixels in 0..16 (``max_value=16``).

    Ids are the row positions in ``sklearn.datasets.load_digits()``.
    """
    import sklearn
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images)
    if not np.array_equal(images, np.round(images)) or images.min() < 0 or images.max() > DIGITS_MAX_VALUE:
        raise ValueError(
            f"sklearn.datasets.load_digits returned pixels outside the integers 0..{DIGITS_MAX_VALUE} "
            f"(scikit-learn {sklearn.__version__}); this loader needs updating for that version"
        )
    pixels = torch.from_numpy(images.astype(np.uint8)[:, None].copy())
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    imageset = ImageSet(
        pixels=pixels,
        labels=labels,
        ids=torch.arange(len(labels), dtype=torch.int64),
        max_value=DIGITS_MAX_VALUE,
        class_names=DIGITS_CLASSES,
        source=f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__})",
    )
    logger.debug("loaded %d digits from %s", len(imageset), imageset.source)
    return imageset
