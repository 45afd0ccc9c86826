"""An immutable, content-addressed set of labelled images.

Every loader in :mod:`bench.data` returns an :class:`ImageSet`. Pixels stay in their stored integer
form (uint8) so that the set can be hashed exactly: :meth:`ImageSet.content_sha256` identifies the
data a benchmark result was measured on, whatever mirror or file format it was read from. Float
images for models are made on demand by :meth:`ImageSet.images`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

Index = int | slice | Sequence[int] | np.ndarray | torch.Tensor


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Labelled images with their ids in the source split.

    Attributes:
        pixels: uint8 tensor of shape (N, C, H, W) holding values in [0, max_value].
        labels: int64 tensor of shape (N,), each in [0, len(class_names)).
        ids: int64 tensor of shape (N,): the position of each image in its source split. Attacks key
            their random numbers on it, so a subset keeps the ids of the images it selects.
        max_value: the pixel value that means full intensity (255 for 8-bit images, 16 for the
            scikit-learn digits).
        class_names: one name per class, indexed by label.
        source: where the data came from, for humans (hub id and revision, or a mirror path).

    The dataclass is frozen but tensors are mutable: do not modify ``pixels``, ``labels`` or ``ids``
    in place, since :meth:`content_sha256` is computed once and cached. Equality is identity
    (``eq=False``); compare :meth:`content_sha256` values to compare contents.
    """

    pixels: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor
    max_value: int
    class_names: tuple[str, ...]
    source: str
    _sha256: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.pixels, torch.Tensor) or self.pixels.dtype != torch.uint8:
            raise ValueError(
                f"ImageSet.pixels must be a torch.uint8 tensor, got {_describe(self.pixels)}; "
                "store integer pixels and pass max_value instead of pre-scaled floats"
            )
        if self.pixels.ndim != 4:
            raise ValueError(
                f"ImageSet.pixels must have shape (N, C, H, W), got shape {tuple(self.pixels.shape)}; "
                "add a channel axis for grey-scale images (pixels[:, None])"
            )
        n = self.pixels.shape[0]
        for name in ("labels", "ids"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.dtype != torch.int64:
                raise ValueError(f"ImageSet.{name} must be a torch.int64 tensor, got {_describe(value)}")
            if value.shape != (n,):
                raise ValueError(
                    f"ImageSet.{name} must have shape ({n},) to match pixels {tuple(self.pixels.shape)}, "
                    f"got shape {tuple(value.shape)}"
                )
        if isinstance(self.max_value, bool) or not isinstance(self.max_value, int) or not 0 < self.max_value <= 255:
            raise ValueError(
                f"ImageSet.max_value must be an int in [1, 255] (255 for 8-bit images), got {self.max_value!r}"
            )
        if not isinstance(self.class_names, tuple) or not self.class_names:
            raise ValueError(f"ImageSet.class_names must be a non-empty tuple of str, got {self.class_names!r}")
        if not all(isinstance(name, str) for name in self.class_names):
            raise ValueError(f"ImageSet.class_names must hold only str, got {self.class_names!r}")
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(
                f"ImageSet.source must be a non-empty description of where the data came from, got {self.source!r}"
            )
        if n == 0:
            return
        bad = torch.nonzero((self.labels < 0) | (self.labels >= len(self.class_names))).flatten()
        if bad.numel():
            i = int(bad[0])
            raise ValueError(
                f"ImageSet.labels[{i}] = {int(self.labels[i])} is outside [0, {len(self.class_names)}) "
                f"({bad.numel()} labels out of range); labels index class_names {self.class_names}"
            )
        if int(self.ids.min()) < 0:
            raise ValueError(
                f"ImageSet.ids must be non-negative positions in the source split, got min {int(self.ids.min())}"
            )
        top = int(self.pixels.max())
        if top > self.max_value:
            raise ValueError(
                f"ImageSet.pixels hold the value {top}, above max_value={self.max_value}; "
                "pass the max_value the pixels were stored with"
            )

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def __repr__(self) -> str:
        return (
            f"ImageSet(n={len(self)}, shape={tuple(self.pixels.shape[1:])}, max_value={self.max_value}, "
            f"classes={len(self.class_names)}, source={self.source!r})"
        )

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    def images(self, idx: Index | None = None) -> torch.Tensor:
        """Float32 images in [0, 1] (``pixels / max_value``), all of them or those selected by ``idx``.

        ``idx`` is anything that indexes the first axis of a tensor (int, slice, list, array, tensor).
        """
        pixels = self.pixels if idx is None else self.pixels[_as_index(idx)]
        return pixels.to(torch.float32) / float(self.max_value)

    def subset(self, indices: Index) -> ImageSet:
        """The images at ``indices`` (positions in this set), keeping their ids, labels and source."""
        index = _as_index(indices)
        if isinstance(index, int):
            index = [index]
        return ImageSet(
            pixels=self.pixels[index],
            labels=self.labels[index],
            ids=self.ids[index],
            max_value=self.max_value,
            class_names=self.class_names,
            source=self.source,
        )

    def content_sha256(self) -> str:
        """Hex sha256 of the set's content, identical for identical data however it was loaded.

        Hashes a header (shape, dtype, max_value), then the uint8 pixels in C order, the labels and
        the ids as little-endian int64. ``class_names`` and ``source`` are not hashed: the same pixels
        read from a different mirror give the same hash. Computed once, then cached.
        """
        if self._sha256 is not None:
            return self._sha256
        digest = hashlib.sha256()
        header = f"ImageSet;shape={tuple(self.pixels.shape)};dtype=uint8;max_value={self.max_value};"
        digest.update(header.encode("ascii"))
        digest.update(np.ascontiguousarray(self.pixels.detach().cpu().numpy()).tobytes())
        for values in (self.labels, self.ids):
            digest.update(values.detach().cpu().numpy().astype("<i8", copy=False).tobytes())
        value = digest.hexdigest()
        object.__setattr__(self, "_sha256", value)  # cache on a frozen instance
        return value


def _as_index(idx: Index) -> int | slice | torch.Tensor:
    """Normalise an index for the first tensor axis (lists and arrays become int64 tensors)."""
    if isinstance(idx, (int, slice)):
        return idx
    if isinstance(idx, torch.Tensor):
        return idx if idx.dtype == torch.bool else idx.to(torch.int64)
    array = np.asarray(idx)
    if array.dtype == np.bool_:
        return torch.from_numpy(array)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"image indices must be integers or booleans, got dtype {array.dtype}")
    return torch.as_tensor(array.astype(np.int64, copy=False))


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of dtype {value.dtype} and shape {tuple(value.shape)}"
    return type(value).__name__
